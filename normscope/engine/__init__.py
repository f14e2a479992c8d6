"""The engine: reduce lazy snapshots to per-tensor float64 statistics, batched, bounded, read once.

    compute_stats(snapshots)            the whole run, in time order
    reduce_snapshot_pair(cur, prev)     one (snapshot, shard) work item, for distributed backends
    reduce_pair(cur, prev)              the same as `SnapshotStats`, with per-row spreads if asked

Modules: `plan` (buckets of parameter pieces), `loading` (refs → flat tensors), `prefetch` (reader
thread), `staging` (CUDA pinned double buffering), `fused` (the CPU's one-pass C kernel),
`chunking` + `reduce` (the torch arithmetic), `accumulate` (totals → `SnapshotStats`), `driver`
(the schedule), `device` (auto/cpu/cuda).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from normscope.engine.device import resolve_device
from normscope.snapshot import ParamStats, Snapshot, SnapshotStats

if TYPE_CHECKING:  # pragma: no cover
    import torch

DEFAULT_BUCKET_BYTES = 256 * 2**20

__all__ = ["DEFAULT_BUCKET_BYTES", "compute_stats", "reduce_pair", "reduce_snapshot_pair"]


def compute_stats(
    snapshots: Sequence[Snapshot],
    *,
    device: str | torch.device = "auto",
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    progress: Callable[[int, int], None] | None = None,
    granularity: str = "tensor",
) -> list[SnapshotStats]:
    """Per-snapshot, per-tensor stats of a run (see `ParamStats`).

    Memory stays within about `bucket_bytes` of tensor data whatever the run's size; every tensor
    is read once. CPU and CUDA agree to 1e-6 relative (the CPU's fused kernel sums in float64,
    CUDA sums fp32 rows of 4096 elements, then float64).

    Args:
        snapshots: the run's snapshots, in time order.
        device: "auto" (CUDA when present), "cpu", "cuda" or "cuda:N", or a `torch.device`.
        bucket_bytes: the bound on tensor data in memory.
        progress: called as `progress(done_bytes, total_bytes)` after each bucket of each
            snapshot.
        granularity: "row" also gives, in `SnapshotStats.rows`, each tensor's per-row (dim 0)
            angles and norms against the previous snapshot, from the same pass, compacted
            (`normscope.row_stats.RowSpread`); "tensor" does not.

    Returns:
        One `SnapshotStats` per snapshot, in `snapshots`' order.

    Raises:
        BadInputError: a tensor cannot be read, the device is not there, or an argument is out
            of range.
    """
    return _run_engine()(
        snapshots,
        device=resolve_device(device),
        bucket_bytes=bucket_bytes,
        progress=progress,
        granularity=granularity,
    )


def reduce_snapshot_pair(
    current: Snapshot,
    previous: Snapshot | None = None,
    *,
    names: Iterable[str] | None = None,
    device: str | torch.device = "auto",
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> dict[str, ParamStats]:
    """Stats of `current`'s parameters, with dot and diff against `previous`.

    The unit of work for a distributed backend: one (checkpoint, shard) pair, with the previous
    checkpoint's matching shard. Same arithmetic as `compute_stats`, so results are identical.

    Args:
        current: the snapshot reduced.
        previous: the snapshot before it, or None (no dot or diff).
        names: the parameters to reduce; None for all.
        device: as for `compute_stats`.
        bucket_bytes: as for `compute_stats`.

    Returns:
        `ParamStats` by parameter name.

    Raises:
        BadInputError: as for `compute_stats`.
    """
    return dict(reduce_pair(current, previous, names=names, device=device, bucket_bytes=bucket_bytes).params)


def reduce_pair(
    current: Snapshot,
    previous: Snapshot | None = None,
    *,
    names: Iterable[str] | None = None,
    device: str | torch.device = "auto",
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    granularity: str = "tensor",
) -> SnapshotStats:
    """`reduce_snapshot_pair` as the engine's `SnapshotStats`.

    Args:
        current: the snapshot reduced.
        previous: the snapshot before it, or None (no dot or diff).
        names: the parameters to reduce; None for all.
        device: as for `compute_stats`.
        bucket_bytes: as for `compute_stats`.
        granularity: "row" adds the per-row spreads of the shard's tensors against `previous`
            (they travel back in the work item's result).

    Returns:
        The stats of `current`.

    Raises:
        BadInputError: as for `compute_stats`.
    """
    snapshots = [current] if previous is None else [previous, current]
    stats = _run_engine()(
        snapshots,
        device=resolve_device(device),
        bucket_bytes=bucket_bytes,
        names=names,
        report_from=len(snapshots) - 1,
        granularity=granularity,
    )
    return stats[0]


def _run_engine() -> Callable[..., list[SnapshotStats]]:
    """`driver.run_engine`, imported when a run is reduced."""
    # `normscope.engine` is imported for its constants and as the parent of its modules (the
    # CLI's start-up, the distributed client): the driver, with every kernel, only for a run.
    # lazy: the driver imports every kernel; importing this package must not
    from normscope.engine.driver import run_engine

    return run_engine
