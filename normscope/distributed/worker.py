"""What runs on a Dask worker: re-open the item's checkpoints from their paths, reduce the shard.

Files are opened with the same sources the local path uses (`weights_only=True`, safetensors,
the restricted unpickler only when the user asked for it), and reduced with the engine's own
`reduce_snapshot_pair`, so a worker computes exactly what the local engine computes.
"""

from __future__ import annotations

import os

from normscope.distributed.items import ShardResult, SnapshotSource, TensorLayout, WorkItem
from normscope.errors import BadInputError, NormscopeError
from normscope.snapshot import Snapshot


def reopen(source: SnapshotSource) -> Snapshot:
    """The one snapshot stored at `source.path`, read by the layout the driver used."""
    from normscope.sources import detect_layout, make_layouts

    layouts = make_layouts(recover_unsafe=source.recover_unsafe)
    if not os.path.exists(source.path):
        raise BadInputError(
            f"{source.path} is not visible on this Dask worker; workers must share the driver's "
            "storage at the same path"
        )
    if source.layout is None:
        layout = detect_layout(source.path, layouts)
    else:
        layout = next((lay for lay in layouts if lay.name == source.layout), None)
        if layout is None:
            raise BadInputError(f"unknown checkpoint layout {source.layout!r} for {source.path}")
    snapshots = list(layout.open(source.path).snapshots)
    if len(snapshots) != 1:
        raise BadInputError(
            f"{source.path} re-opened as {len(snapshots)} snapshots on a Dask worker, expected one"
        )
    return snapshots[0]


def check_layout(snapshot: Snapshot, names: tuple[str, ...], expected: TensorLayout) -> None:
    """The shard's parameters are still what the driver saw (the file did not change under us)."""
    from normscope.distributed.items import tensor_layout

    found = tensor_layout(snapshot, names)
    if found != expected:
        diff = sorted(set(found) ^ set(expected), key=str)[0]
        raise BadInputError(
            f"{snapshot.meta.path} changed since normscope opened it (parameter {diff[0]!r} "
            "differs on a Dask worker); rerun once the checkpoint is complete"
        )


def reduce_work_item(item: WorkItem) -> ShardResult:
    """The Dask task: stats of the item's shard; a user-facing error is returned, not raised."""
    from normscope.engine import reduce_snapshot_pair

    try:
        current = reopen(item.current)
        check_layout(current, item.names, item.current_layout)
        previous = None
        if item.previous is not None:
            previous = reopen(item.previous)
            check_layout(previous, item.names, item.previous_layout)
        stats = reduce_snapshot_pair(
            current,
            previous,
            names=item.names,
            device=item.device,
            bucket_bytes=item.bucket_bytes,
        )
    except NormscopeError as exc:
        return ShardResult(item.index, {}, exc.with_traceback(None))
    return ShardResult(item.index, stats)
