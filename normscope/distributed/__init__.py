"""The Dask backend: the engine's reduction spread over a cluster, one task per (checkpoint, shard).

    compute_stats_dask(run, client=...)          same list[SnapshotStats] as engine.compute_stats
    load_trajectory_distributed(path, cluster=)  same Trajectory as api.load_trajectory
    connect(cluster=None, workers=None)          a Client: remote scheduler, or a local cluster

Modules: `items` (picklable work items and sharding), `worker` (what a task runs), `client` (the
driver: submit, retry, merge). dask.distributed is imported only inside these functions
(`pip install 'normscope[dask]'`).
"""

from __future__ import annotations

from normscope.distributed.client import (
    ClusterError,
    compute_stats_dask,
    connect,
    load_trajectory_distributed,
)
from normscope.distributed.items import DEFAULT_SHARD_BYTES, WorkItem, plan_items

__all__ = [
    "DEFAULT_SHARD_BYTES",
    "ClusterError",
    "WorkItem",
    "compute_stats_dask",
    "connect",
    "load_trajectory_distributed",
    "plan_items",
]
