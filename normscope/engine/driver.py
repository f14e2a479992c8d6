"""The schedule: parameter-major walk over (bucket, snapshot) work items, read ahead on a thread.

    for bucket in plan:                       # a few hundred MB of parameters
        for snapshot in time order:           # read on the reader thread, one item ahead
            reduce(bucket@snapshot, previous=bucket@snapshot-1)

Peak memory is about four buckets (the one before the previous, still read by kernels finishing
in the background, previous, current, read-ahead); each tensor is read once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from normscope._gc import collector_paused
from normscope.engine.accumulate import Accumulator
from normscope.engine.fused import fused_kernel
from normscope.engine.loading import LoadedPiece, LoadedWork, load_work
from normscope.engine.plan import Plan, plan_buckets
from normscope.engine.prefetch import Prefetcher
from normscope.engine.reduce import GroupInput, start_group
from normscope.engine.workers import CpuWorkers, Inline, Runner
from normscope.errors import BadInputError
from normscope.snapshot import Snapshot, SnapshotStats

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from normscope.engine.staging import CudaStager, Staged

# Buffers alive at once: the current snapshot's bucket, the previous one, the one before it (its
# pair's kernels may still be running while the current item starts), and the one read ahead.
BUCKETS_IN_FLIGHT = 4


def run_engine(
    snapshots: Sequence[Snapshot],
    *,
    device: torch.device,
    bucket_bytes: int,
    progress: Callable[[int, int], None] | None = None,
    names: Iterable[str] | None = None,
    report_from: int = 0,
) -> list[SnapshotStats]:
    """Stats for `snapshots[report_from:]`; earlier snapshots serve only as the previous one.

    `names` restricts the work to those parameters (a shard, for distributed backends).
    """
    with collector_paused():
        return _run(snapshots, device=device, bucket_bytes=bucket_bytes, progress=progress,
                    names=names, report_from=report_from)


def _run(
    snapshots: Sequence[Snapshot],
    *,
    device: torch.device,
    bucket_bytes: int,
    progress: Callable[[int, int], None] | None,
    names: Iterable[str] | None,
    report_from: int,
) -> list[SnapshotStats]:
    if bucket_bytes < 1:
        raise BadInputError(f"bucket size must be positive, got {bucket_bytes} bytes")
    snapshots = list(snapshots)
    wanted = None if names is None else set(names)
    plan = plan_buckets(
        snapshots,
        max(1, bucket_bytes // BUCKETS_IN_FLIGHT),
        names=wanted,
        state_from=report_from,
    )
    stager = _make_stager(device, plan)
    items = [(b, t) for b in range(len(plan.buckets)) for t in range(len(snapshots))]

    # Paging mapped files in on the reader thread helps the torch CPU kernels, which would stall
    # on faults between blocks; the fused kernel's threads take the faults in parallel (0.8 GB
    # LLM run: 0.157 s without the reader's touch, 0.174 s with it), and on CUDA the staging copy
    # on the reader thread touches the pages anyway.
    touch_pages = device.type == "cpu" and fused_kernel() is None

    def read(item: tuple[int, int]) -> tuple[LoadedWork, Staged | None]:
        b, t = item
        work = load_work(snapshots, plan.buckets[b], b, t, plan.entries[t],
                         touch_pages=touch_pages)
        return work, _stage(work, stager)

    accumulator = Accumulator()
    done = 0
    previous: LoadedWork | None = None
    # The item whose kernels are running: it is collected after the next item's kernels start,
    # so the Python-side work of one overlaps the arithmetic of the other. It holds `previous`
    # and the bucket before it (its kernels read both): the fourth bucket in flight.
    in_flight: Callable[[Accumulator], None] | None = None
    runner = CpuWorkers() if device.type == "cpu" else Inline()

    def collect() -> None:
        nonlocal in_flight
        if in_flight is not None:
            in_flight(accumulator)
            in_flight = None
            if progress is not None:
                progress(done, plan.total_bytes)

    with runner_scope(runner), Prefetcher(items, read, depth=1) as loaded:
        for (b, t), (work, staged) in loaded:
            if staged is not None:
                _use_device_tensors(work, staged.wait())
            if previous is not None and previous.bucket != b:
                previous = None
            started = _start_work(work, previous, runner) if t >= report_from else None
            collect()
            in_flight = started
            previous = work
            done += plan.sizes[b][t]
            if in_flight is None and progress is not None:
                progress(done, plan.total_bytes)
        collect()
    return accumulator.stats(snapshots, plan.entries, first=report_from)


def _start_work(
    work: LoadedWork,
    previous: LoadedWork | None,
    runner: Runner,
) -> Callable[[Accumulator], None]:
    """Start reducing one (bucket, snapshot), its pieces grouped by device and stream dtypes;
    the returned function waits for the sums and adds them to the accumulator."""
    # Both items read the same bucket of the plan, so their pieces are the same objects: keyed by
    # identity, not by the dataclass's field hash (tens of thousands of lookups per run).
    prev_weights: dict[int, LoadedPiece] = (
        {id(p.piece): p for p in previous.pieces} if previous else {}
    )
    groups: dict[tuple, list[tuple[LoadedPiece, torch.Tensor | None]]] = {}
    for loaded in work.pieces:
        before = prev_weights.get(id(loaded.piece))
        prev = (
            before.weight
            if before is not None and before.shape == loaded.shape
            else None
        )
        # one group per (device, dtype of each stream): tens of thousands of pieces pass here
        key = (
            loaded.weight.device,
            loaded.weight.dtype,
            None if prev is None else prev.dtype,
            None if loaded.buf is None else loaded.buf.dtype,
            None if loaded.sq is None else loaded.sq.dtype,
        )
        groups.setdefault(key, []).append((loaded, prev))
    started = []
    for (_, _, prev_dtype, buf_dtype, sq_dtype), members in groups.items():
        pieces = [m[0] for m in members]
        finish = start_group(
            GroupInput(
                weight=[p.weight for p in pieces],
                prev=[m[1] for m in members] if prev_dtype is not None else None,
                buf=[p.buf for p in pieces] if buf_dtype is not None else None,
                sq=[p.sq for p in pieces] if sq_dtype is not None else None,
            ),
            runner,
        )
        started.append(([p.piece.name for p in pieces], finish))

    def collect(accumulator: Accumulator) -> None:
        for names, finish in started:
            accumulator.add_group(work.snapshot, names, finish())

    return collect


@contextlib.contextmanager
def runner_scope(runner: Runner) -> Iterator[Runner]:
    try:
        yield runner
    finally:
        if isinstance(runner, CpuWorkers):
            runner.close()


def _make_stager(device: torch.device, plan: Plan) -> CudaStager | None:
    if device.type != "cuda":
        return None
    from normscope.engine.staging import CudaStager

    largest = max((max(sizes, default=0) for sizes in plan.sizes), default=0)
    # Packing aligns each tensor to 64 bytes; leave room for that on top of the bucket's bytes.
    pieces = max((len(b) for b in plan.buckets), default=0)
    return CudaStager(device, largest + 64 * 3 * pieces)


def _tensors_of(work: LoadedWork) -> list[torch.Tensor]:
    return [t for p in work.pieces for t in (p.weight, p.buf, p.sq) if t is not None]


def _stage(work: LoadedWork, stager: CudaStager | None) -> Staged | None:
    """On the reader thread: start the host→device copy of this item (CUDA only)."""
    if stager is None or not work.pieces:
        return None
    return stager.to_device(_tensors_of(work))


def _use_device_tensors(work: LoadedWork, tensors: list[torch.Tensor]) -> None:
    it = iter(tensors)
    for p in work.pieces:
        p.weight = next(it)
        p.buf = next(it) if p.buf is not None else None
        p.sq = next(it) if p.sq is not None else None
