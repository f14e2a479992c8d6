"""The schedule: parameter-major walk over (bucket, snapshot) work items, read ahead on a thread.

    for bucket in plan:                       # a few hundred MB of parameters
        for snapshot in time order:           # read on the reader thread, one item ahead
            reduce(bucket@snapshot, previous=bucket@snapshot-1)

Peak memory is about four buckets (the one before the previous, still read by kernels finishing
in the background, previous, current, read-ahead); each tensor is read once.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from itertools import repeat
from typing import TYPE_CHECKING

from normscope._gc import collector_paused
from normscope._torch_seen import tensor_type
from normscope.engine.accumulate import Accumulator
from normscope.engine.fused import VanishedPage, fused_kernel
from normscope.engine.group import GroupInput
from normscope.engine.in_place import start_in_place, start_in_place_chain
from normscope.engine.loading import InPlaceBuckets, LoadedWork, WorkItem, load_work
from normscope.engine.plan import Plan, plan_buckets
from normscope.engine.prefetch import Prefetcher
from normscope.engine.reduce import start_group
from normscope.engine.rows import (
    GRANULARITIES,
    GRANULARITY_ROW,
    GRANULARITY_TENSOR,
    RowCollector,
)
from normscope.engine.workers import CpuWorkers, Inline, Runner
from normscope.errors import BadInputError
from normscope.file_stamps import check_unchanged
from normscope.snapshot import Snapshot, SnapshotStats, has_address

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from normscope.engine.staging import CudaStager, Staged

# Buffers alive at once: the current snapshot's bucket, the previous one, the one before it (its
# pair's kernels may still be running while the current item starts), and the one read ahead.
BUCKETS_IN_FLIGHT = 4
# Snapshots of a bucket read in place reduced by one kernel call (`_start_chain`): each is read
# from memory once, its previous from the cache, except the first's previous.
CHAIN_SNAPSHOTS = 8


def run_engine(
    snapshots: Sequence[Snapshot],
    *,
    device: torch.device,
    bucket_bytes: int,
    progress: Callable[[int, int], None] | None = None,
    names: Iterable[str] | None = None,
    report_from: int = 0,
    granularity: str = GRANULARITY_TENSOR,
) -> list[SnapshotStats]:
    """Stats for `snapshots[report_from:]`; earlier snapshots serve only as the previous one.

    `names` restricts the work to those parameters (a shard, for distributed backends).
    `granularity="row"` adds each tensor's per-row spread (`SnapshotStats.rows`, see `engine.rows`).
    """
    if granularity not in GRANULARITIES:
        raise BadInputError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    with collector_paused():
        stats = _run(snapshots, device=device, bucket_bytes=bucket_bytes, progress=progress,
                     names=names, report_from=report_from,
                     rows=RowCollector() if granularity == GRANULARITY_ROW else None)
    return stats


def _run(
    snapshots: Sequence[Snapshot],
    *,
    device: torch.device,
    bucket_bytes: int,
    progress: Callable[[int, int], None] | None,
    names: Iterable[str] | None,
    report_from: int,
    rows: RowCollector | None = None,
) -> list[SnapshotStats]:
    if bucket_bytes < 1:
        raise BadInputError(f"bucket size must be positive, got {bucket_bytes} bytes")
    snapshots = list(snapshots)
    wanted = None if names is None else set(names)
    in_place = reads_in_place(device, rows=rows is not None)
    plan = plan_buckets(
        snapshots,
        max(1, bucket_bytes // BUCKETS_IN_FLIGHT),
        names=wanted,
        state_from=report_from,
        read_in_place=_lies_mapped(snapshots) if in_place else None,
    )
    stager = _make_stager(device, plan)
    items = [(b, t) for b in range(len(plan.buckets)) for t in range(len(snapshots))]
    known: InPlaceBuckets = {}  # what `load_work` found of each bucket read in place (reader thread)

    def read(item: tuple[int, int]) -> tuple[LoadedWork, Staged | None]:
        b, t = item
        # before any page of a file rewritten since it was opened is touched (`file_stamps`)
        check_unchanged(snapshots[t].files)
        work = load_work(WorkItem.from_plan(plan, snapshots, bucket=b, snapshot=t), in_place=in_place,
                         known=known)  # fmt: skip
        return work, _stage(work, stager)

    accumulator = Accumulator()
    done = 0
    previous: LoadedWork | None = None
    # The item whose kernels are running: it is collected after the next item's kernels start,
    # so the Python-side work of one overlaps the arithmetic of the other. It holds `previous`
    # and the bucket before it (its kernels read both): the fourth bucket in flight.
    in_flight: Callable[[Accumulator], None] | None = None
    in_flight_snapshots: Sequence[int] = ()
    runner = CpuWorkers() if device.type == "cpu" else Inline()
    # Items of a bucket read in place, in consecutive snapshots, held (refs: no memory of their
    # own) and then reduced in one kernel call (`_start_chain`); `chain_previous` is the item
    # before the first, read again as its previous snapshot.
    chain: list[LoadedWork] = []
    chain_previous: LoadedWork | None = None

    def collect() -> None:
        nonlocal in_flight
        if in_flight is not None:
            try:
                in_flight(accumulator)
            except VanishedPage:  # a file cut short during the arithmetic: name it
                raise _vanished(snapshots, in_flight_snapshots) from None
            in_flight = None
            # the sums are of the files as they were opened only if they still are
            for t in in_flight_snapshots:
                check_unchanged(snapshots[t].files)
            if progress is not None:
                progress(done, plan.total_bytes)

    def flush_chain() -> None:
        """Start the held chain's kernel, collect the item before it; the chain's last item
        becomes the previous snapshot of what follows."""
        nonlocal in_flight, in_flight_snapshots, previous, done, chain_previous
        if not chain:
            return
        started = _start_chain(chain, chain_previous, runner, report_from)
        collect()
        in_flight, in_flight_snapshots = started, [w.snapshot for w in chain]
        previous, chain_previous = chain[-1], None
        done += sum(plan.sizes[w.bucket][w.snapshot] for w in chain)
        chain.clear()

    with runner_scope(runner), Prefetcher(items, read, depth=1) as loaded:
        for (b, t), (work, staged) in loaded:
            if staged is not None:
                work.replace_tensors(staged.wait())
            if chain and (chain[-1].bucket != b or not _continues(chain[-1], work)):
                flush_chain()
            if previous is not None and previous.bucket != b:
                previous = None
            if chain or (CHAIN_SNAPSHOTS > 1 and work.columns is not None
                         and (previous is None or _continues(previous, work))):  # fmt: skip
                if not chain:
                    chain_previous = previous
                chain.append(work)
                if len(chain) == CHAIN_SNAPSHOTS:
                    flush_chain()
                continue
            started = _start_work(work, previous, runner) if t >= report_from else None
            if rows is not None and t >= report_from:
                for piece, shape, weight, prev in zip(work.pieces, work.shapes, work.weight,
                                                      _previous_weights(work, previous)):
                    rows.add(t, piece.name, piece.start, weight, prev, shape[0] if shape else None)
            collect()
            in_flight, in_flight_snapshots = started, (t,)
            previous = work
            done += plan.sizes[b][t]
            if in_flight is None and progress is not None:
                progress(done, plan.total_bytes)
        flush_chain()
        collect()
    stats = accumulator.stats(snapshots, plan.entries, first=report_from)
    if rows is not None:
        stats = [replace(s, rows=rows.for_snapshot(report_from + i)) for i, s in enumerate(stats)]
    return stats


def reads_in_place(device: torch.device, *, rows: bool) -> bool:
    """Whether the fused kernel, behind its SIGBUS guard, reduces every bucket (`load_work`'s
    `in_place`): its buckets stay views of the files, refs read where they lie. Everything else
    reads its tensors by read calls into memory of their own (`file_reads`): torch's kernels
    (the fused kernel off or not built), the row sums, which need tensors, and the CUDA staging
    copy."""
    return device.type == "cpu" and fused_kernel() is not None and not rows


def _mapped_ref(ref: object) -> bool:
    """Whether `ref` lies at an address the kernel reads (`snapshot.AddressedTensorRef`)."""
    return has_address(ref) and ref.address is not None


def _lies_mapped(snapshots: Sequence[Snapshot]) -> Callable[[str], bool]:
    """Whether the kernel reads a parameter where it lies in every snapshot: a ref with an
    address everywhere (`snapshot.TensorRef`) and no optimizer state, whose streams would be
    read into memory. Such a parameter needs no memory of its own however large it is, so the
    plan keeps it whole; row slices would be read into memory (`load_work`)."""

    def mapped(name: str) -> bool:
        return all(_mapped_ref(s.tensors.get(name)) and not s.optimizer_state.get(name)
                   for s in snapshots)  # fmt: skip

    return mapped


def _vanished(snapshots: Sequence[Snapshot], read: Sequence[int]) -> BadInputError:
    """The error for a page that vanished while the kernel read snapshots `read` (and the one
    before each, its previous): the file that changed, named by its stamp."""
    for t in read:
        for snapshot in (snapshots[t], snapshots[t - 1] if t else None):
            if snapshot is not None:
                try:
                    check_unchanged(snapshot.files)
                except BadInputError as exc:
                    return exc
    return BadInputError(f"a file of {snapshots[read[-1]].meta.path} was cut short while "
                         "normscope was reading it (a job still writing it?); run again once it "
                         "is complete")


def _continues(last: LoadedWork, work: LoadedWork) -> bool:
    """Whether `work` extends a chain ending in `last`: the next snapshot of the same bucket,
    read in place with the same pieces and shapes."""
    return (work.columns is not None and work.snapshot == last.snapshot + 1
            and work.pieces == last.pieces and work.shapes == last.shapes)  # fmt: skip


def _start_chain(chain: Sequence[LoadedWork], previous: LoadedWork | None, runner: Runner,
                 report_from: int) -> Callable[[Accumulator], None]:  # fmt: skip
    """Start one kernel call over a bucket read in place in consecutive snapshots, each against
    the one before (`in_place.start_in_place_chain`; `previous`: the item before the first);
    the returned function adds the sums of the snapshots from `report_from` on to the
    accumulator."""
    columns = [w.columns for w in chain]
    started = start_in_place_chain(columns, [w.weight for w in chain], runner,  # type: ignore[arg-type]
                                   None if previous is None else previous.columns)
    if started is None:  # pragma: no cover - a chain is made only where the kernel reads in place
        raise RuntimeError("the fused kernel is gone")

    kept = (list(chain), previous)  # their refs keep alive the memory the kernel reads

    def collect(accumulator: Accumulator) -> None:
        for work, block in zip(kept[0], started()):
            if work.snapshot >= report_from:
                accumulator.add_block(work.snapshot, work.pieces, block)

    return collect


def _start_work(
    work: LoadedWork,
    previous: LoadedWork | None,
    runner: Runner,
) -> Callable[[Accumulator], None]:
    """Start reducing one (bucket, snapshot), its pieces grouped by device and stream dtypes;
    the returned function waits for the sums and adds them to the accumulator."""
    in_place = _start_in_place(work, previous, runner)
    if in_place is not None:
        return in_place
    streams = {
        "weight": work.weight,
        "prev": _previous_weights(work, previous),
        "buf": work.buf,
        "sq": work.sq,
    }
    started = []
    for indices, group in _groups(streams, len(work.pieces)):
        pieces = work.pieces if indices is None else [work.pieces[i] for i in indices]
        started.append(([p.name for p in pieces], start_group(group, runner)))

    def collect(accumulator: Accumulator) -> None:
        for names, finish in started:
            accumulator.add_group(work.snapshot, names, finish())

    return collect


def _start_in_place(
    work: LoadedWork, previous: LoadedWork | None, runner: Runner
) -> Callable[[Accumulator], None] | None:
    """`_start_work` for a bucket of refs read in place whose previous snapshot (if any) is one
    too, with the same pieces and shapes: arrays from reader to accumulator (`in_place`)."""
    columns = work.columns
    if columns is None:
        return None
    prev = None
    if previous is not None:
        if previous.columns is None or previous.pieces != work.pieces or (
            previous.shapes != work.shapes
        ):
            return None
        prev = previous.columns
    started = start_in_place(columns, prev, work.weight, runner)
    if started is None:
        return None

    # Both items' refs keep alive the memory the kernel reads, until `started()` has returned.
    kept = (work, previous)

    def collect(accumulator: Accumulator) -> None:
        current = kept[0]
        accumulator.add_block(current.snapshot, current.pieces, started())

    return collect


def _previous_weights(work: LoadedWork, previous: LoadedWork | None) -> list[torch.Tensor | None]:
    """Each piece's counterpart in the previous snapshot (same bucket, so the same Piece objects),
    None where that snapshot lacks it or had another shape."""
    if previous is None:
        return [None] * len(work.pieces)
    if previous.pieces == work.pieces and previous.shapes == work.shapes:  # the common case
        return previous.weight
    where = {id(piece): i for i, piece in enumerate(previous.pieces)}
    found: list[torch.Tensor | None] = []
    for piece, shape in zip(work.pieces, work.shapes):
        i = where.get(id(piece))
        found.append(previous.weight[i] if i is not None and previous.shapes[i] == shape else None)
    return found


_PLACE = operator.attrgetter("device", "dtype")
_IN_PLACE = "in place"  # the device of a ref the fused kernel reads where it lies


def _groups(
    streams: dict[str, list[torch.Tensor | None]], count: int
) -> list[tuple[list[int] | None, GroupInput]]:
    """The pieces split into groups of one device and one dtype per stream, a stream absent from
    every member or present in all. Indices None: every piece, in order (the usual case). Whole
    columns are compared at once; tens of thousands of pieces pass here."""
    shared = [_uniform_place(column) for column in streams.values()]
    if False not in shared:  # a place is a tuple or None, and neither equals False
        return [(None, _group_input(streams, tuple(shared)))]
    places = [_places(column, count) for column in streams.values()]
    keys = list(zip(*places))
    if len(set(keys)) == 1:
        return [(None, _group_input(streams, keys[0]))]
    members: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    return [
        (indices, _group_input({s: [c[i] for i in indices] for s, c in streams.items()}, key))
        for key, indices in members.items()
    ]


def _uniform_place(column: list[torch.Tensor | None]) -> tuple | None | bool:
    """The one place every entry of the column shares (None: absent from all); False where the
    entries differ. Whole columns at once: a ResNet-shaped bucket holds thousands of pieces."""
    tensor = tensor_type()
    kinds = set(map(type, column))
    if kinds == {type(None)}:
        return None
    if type(None) in kinds:
        return False
    if not any(issubclass(kind, tensor) for kind in kinds):  # refs read in place
        dtypes = set(map(_DTYPE, column))
        return (_IN_PLACE, dtypes.pop()) if len(dtypes) == 1 else False
    if all(issubclass(kind, tensor) for kind in kinds):
        places = set(map(_PLACE, column))
        return places.pop() if len(places) == 1 else False
    return False


def _places(column: list[torch.Tensor | None], count: int) -> list[tuple | None]:
    tensor = tensor_type()
    # by identity: list.count(None) would call Tensor.__eq__ on every tensor
    absent = sum(map(operator.is_, column, repeat(None)))
    if absent == count:
        return [None] * count
    tensors = sum(map(isinstance, column, repeat(tensor)))
    if absent == 0 and tensors == count:
        return list(map(_PLACE, column))
    if absent == 0 and tensors == 0:  # refs read in place (`load_work`)
        return list(zip(repeat(_IN_PLACE), map(_DTYPE, column)))
    return [
        None if t is None else _PLACE(t) if isinstance(t, tensor) else (_IN_PLACE, t.dtype)
        for t in column
    ]


_DTYPE = operator.attrgetter("dtype")


def _group_input(streams: dict[str, list[torch.Tensor | None]], key: tuple) -> GroupInput:
    present = {s: column if place is not None else None
               for (s, column), place in zip(streams.items(), key)}  # fmt: skip
    return GroupInput(**present)  # type: ignore[arg-type]


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
    # lazy: it imports torch; only CUDA needs it
    from normscope.engine.staging import CudaStager

    largest = max((max(sizes, default=0) for sizes in plan.sizes), default=0)
    # Packing aligns each tensor to 64 bytes; leave room for that on top of the bucket's bytes.
    pieces = max((len(b) for b in plan.buckets), default=0)
    return CudaStager(device, largest + 64 * 3 * pieces)


def _stage(work: LoadedWork, stager: CudaStager | None) -> Staged | None:
    """On the reader thread: start the host→device copy of this item (CUDA only)."""
    if stager is None or not work.pieces:
        return None
    return stager.to_device(work.tensors())
