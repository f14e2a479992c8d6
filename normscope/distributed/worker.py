"""What runs on a Dask worker: re-open the item's checkpoints from their paths, reduce the shard.

Files are opened with the same sources the local path uses (`weights_only=True`, safetensors,
the restricted unpickler only when the user asked for it), and reduced with the engine's own
`reduce_pair`, so a worker computes exactly what the local engine computes.
"""

from __future__ import annotations

import functools
import os

from normscope.distributed.items import (
    ShardResult,
    SnapshotSource,
    TensorLayout,
    WorkItem,
    tensor_layout,
)
from normscope.engine import reduce_pair
from normscope.errors import BadInputError, NormscopeError
from normscope.snapshot import Snapshot
from normscope.sources import detect_layout, make_layouts


def reopen(source: SnapshotSource) -> Snapshot:
    """The one snapshot stored at `source.path`, read by the layout the driver used.

    A worker that reduces checkpoint t and then t+1 opens t again as the previous one: the last
    two opened are kept (per worker process; keyed on the path's size and mtime, so a rewritten
    file is opened afresh). Their tensors are mmap-backed (legacy non-zip torch files excepted):
    keeping them costs page cache, not memory.
    """
    try:
        stat = os.stat(source.path)
    except OSError:
        raise BadInputError(
            f"{source.path} is not visible on this Dask worker; workers must share the driver's "
            "storage at the same path"
        ) from None
    return _open_cached(source, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _open_cached(source: SnapshotSource, size: int, mtime_ns: int) -> Snapshot:
    layouts = make_layouts(recover_unsafe=source.recover_unsafe)
    if source.layout is None:
        layout = detect_layout(source.path, layouts)
    else:
        layout = next((lay for lay in layouts if lay.name == source.layout), None)
        if layout is None:
            raise BadInputError(
                f"unknown checkpoint layout {source.layout!r} for {source.path}"
            )
    snapshots = list(layout.open(source.path).snapshots)
    if len(snapshots) != 1:
        raise BadInputError(
            f"{source.path} re-opened as {len(snapshots)} snapshots on a Dask worker, expected one"
        )
    return snapshots[0]


def check_layout(
    snapshot: Snapshot, names: tuple[str, ...], expected: TensorLayout
) -> None:
    """The shard's parameters are still what the driver saw (the file did not change under us)."""
    found = tensor_layout(snapshot, names)
    if found != expected:
        diff = min(set(found) ^ set(expected), key=str)
        raise BadInputError(
            f"{snapshot.meta.path} changed since normscope opened it (parameter {diff[0]!r} "
            "differs on a Dask worker); rerun once the checkpoint is complete"
        )


def reduce_work_item(item: WorkItem) -> ShardResult:
    """The Dask task: stats of the item's shard; a user-facing error is returned, not raised."""
    try:
        # previous first: it is the checkpoint this worker most likely opened last (as the
        # current one of its previous task), so the two-entry cache keeps it
        previous = None
        if item.previous is not None:
            previous = reopen(item.previous)
            check_layout(previous, item.names, item.previous_layout)
        current = reopen(item.current)
        check_layout(current, item.names, item.current_layout)
        stats = reduce_pair(
            current,
            previous,
            names=item.names,
            device=item.device,
            bucket_bytes=item.bucket_bytes,
            granularity=item.granularity,
        )
    except NormscopeError as exc:
        return ShardResult(item.index, {}, exc.with_traceback(None))
    return ShardResult(item.index, dict(stats.params), rows=dict(stats.rows))
