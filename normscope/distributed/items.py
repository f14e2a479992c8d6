"""Work items: plain, picklable descriptions of one (checkpoint, shard) task, and how to cut them.

A work item names files, never holds them: the layout and path of the current checkpoint and of the
previous one, the parameter names of the shard, and the shape and dtype the driver saw for each.
Workers re-open the files with the same loaders the local path uses (see `worker`), so nothing
lazy, open or mmap-backed crosses the network.

A shard is a group of a checkpoint's parameters: those stored in the same file (one shard of a
sharded safetensors model), cut further into groups of at most `shard_bytes`, so a few very large
checkpoints still spread over many workers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from normscope.engine import DEFAULT_BUCKET_BYTES
from normscope.engine.plan import dtype_of, entry_of, shape_of, tensor_bytes
from normscope.errors import NormscopeError
from normscope.snapshot import ParamStats, Snapshot

# Parameters per task, in bytes of weights and optimizer state: enough to amortise opening the
# files, small enough that a few large checkpoints still give every worker something to do.
DEFAULT_SHARD_BYTES = 1 << 30

# (name, shape, dtype) of each parameter of a shard, as the driver saw it.
TensorLayout = tuple[tuple[str, tuple[int, ...], str], ...]


@dataclass(frozen=True)
class SnapshotSource:
    """Where a worker re-opens a snapshot: an absolute path, and the layout that reads it
    (None: detect it as `open_run` would)."""

    path: str
    layout: str | None
    recover_unsafe: bool = False


@dataclass(frozen=True)
class WorkItem:
    """Reduce `names` of snapshot number `index` (`current`), dot products against `previous`."""

    index: int
    current: SnapshotSource
    previous: SnapshotSource | None
    names: tuple[str, ...]
    current_layout: TensorLayout
    previous_layout: TensorLayout  # the shard's parameters the previous snapshot has
    nbytes: int  # bytes the task reads: current weights and state, previous weights
    device: str = "auto"
    bucket_bytes: int = DEFAULT_BUCKET_BYTES
    granularity: str = "tensor"  # "row": the result carries the shard's per-row spreads too


@dataclass(frozen=True)
class ShardResult:
    """A task's answer: per-parameter stats (and, at row granularity, each tensor's per-row spread,
    `normscope.row_stats.RowSpread`: a few hundred numbers, not the rows), or the user-facing error it hit
    (not raised on the worker, so that `retries=` is spent on lost workers and transient failures,
    not corrupt files)."""

    index: int
    stats: dict[str, ParamStats]
    error: NormscopeError | None = None
    rows: dict[str, Any] = field(default_factory=dict)


def tensor_layout(snapshot: Snapshot, names: Sequence[str]) -> TensorLayout:
    refs = snapshot.tensors
    return tuple((n, shape_of(refs[n]), dtype_of(refs[n])) for n in names if n in refs)


def storage_file(snapshot: Snapshot, name: str) -> str | None:
    """The file a parameter is stored in, when its ref says (safetensors shards); else None."""
    return getattr(snapshot.tensors[name], "path", None)


def shards_of(snapshot: Snapshot, shard_bytes: int) -> list[tuple[str, ...]]:
    """The snapshot's parameters, in its own order, grouped by storage file and then by size."""
    by_file: dict[str | None, list[str]] = {}
    for name in snapshot.tensors:
        by_file.setdefault(storage_file(snapshot, name), []).append(name)
    shards: list[tuple[str, ...]] = []
    for names in by_file.values():
        current: list[str] = []
        size = 0
        for name in names:
            nbytes = entry_of(snapshot, name).nbytes
            if current and size + nbytes > shard_bytes:
                shards.append(tuple(current))
                current, size = [], 0
            current.append(name)
            size += nbytes
        if current:
            shards.append(tuple(current))
    return shards


def source_of(
    snapshot: Snapshot, layout: str | None, recover_unsafe: bool
) -> SnapshotSource:
    return SnapshotSource(os.path.abspath(snapshot.meta.path), layout, recover_unsafe)


def plan_items(
    snapshots: Sequence[Snapshot],
    *,
    layout: str | None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    recover_unsafe: bool = False,
    device: str = "auto",
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    granularity: str = "tensor",
) -> list[WorkItem]:
    """One item per (snapshot, shard), each paired with the previous snapshot in `snapshots`."""
    items = []
    for t, snap in enumerate(snapshots):
        prev = snapshots[t - 1] if t > 0 else None
        for names in shards_of(snap, shard_bytes):
            prev_layout = tensor_layout(prev, names) if prev is not None else ()
            nbytes = sum(entry_of(snap, n).nbytes for n in names)
            if prev is not None:
                nbytes += sum(tensor_bytes(prev.tensors[n]) for n, _, _ in prev_layout)
            items.append(
                WorkItem(
                    index=t,
                    current=source_of(snap, layout, recover_unsafe),
                    previous=None
                    if prev is None
                    else source_of(prev, layout, recover_unsafe),
                    names=names,
                    current_layout=tensor_layout(snap, names),
                    previous_layout=prev_layout,
                    nbytes=nbytes,
                    device=device,
                    bucket_bytes=bucket_bytes,
                    granularity=granularity,
                )
            )
    return items
