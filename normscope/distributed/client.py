"""The driver side: open the run locally, send (checkpoint, shard) items to Dask, merge the stats.

    path ──open_run──► Run ──plan_items──► WorkItem … ──Dask──► ShardResult … ──merge──► SnapshotStats

The driver reads only headers (it opens the run to order it and to plan the shards); tensor data is
read on the workers, which must see the same files at the same absolute paths.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from normscope.api import check_granularity, open_selected_run, trajectory_from_run
from normscope.distributed.items import (
    DEFAULT_SHARD_BYTES,
    ShardResult,
    WorkItem,
    plan_items,
)
from normscope.distributed.worker import reduce_work_item
from normscope.engine import DEFAULT_BUCKET_BYTES
from normscope.engine.plan import dtype_of, shape_of
from normscope.errors import BadInputError, ConfigError, NormscopeError
from normscope.snapshot import ParamStats, Run, Snapshot, SnapshotStats

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

    from normscope.trajectory import Trajectory

MISSING_EXTRA = "the Dask backend needs dask.distributed: pip install 'normscope[dask]'"
CONNECT_TIMEOUT_S = 10
# Lost workers are handled by the scheduler (a task is rescheduled until it has killed
# `distributed.scheduler.allowed-failures` workers); `retries` re-runs a task that raised.
DEFAULT_RETRIES = 2
# How long the remaining items may go with no worker running any of them before they are
# submitted again (Dask can lose a task with a worker that dies mid-transition), and how often
# that is looked at.
STALL_S = 120.0
STALL_POLL_S = 2.0


class ClusterError(NormscopeError):
    """The Dask cluster could not be reached, or kept losing workers on a task."""


def require_distributed() -> Any:
    """The `distributed` module, or a one-line ConfigError naming the extra."""
    try:
        import distributed  # lazy: dask[distributed] is an optional extra
    except ImportError:
        raise ConfigError(MISSING_EXTRA) from None
    return distributed


def check_cluster_options(cluster: str | None, workers: int | None) -> None:
    if cluster and workers:
        raise ConfigError("give either --cluster or --workers, not both")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")


@contextlib.contextmanager
def connect(
    cluster: str | None = None,
    workers: int | None = None,
    *,
    timeout_s: float = CONNECT_TIMEOUT_S,
) -> Iterator[Client]:
    """A client of the scheduler at `cluster`, or of a local cluster of `workers` processes
    (one thread each; default one per core), closed on exit."""
    distributed = require_distributed()
    check_cluster_options(cluster, workers)
    if cluster:
        try:
            client = distributed.Client(cluster, timeout=timeout_s)
        except (OSError, TimeoutError, ValueError) as exc:
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise ClusterError(
                f"cannot reach the Dask scheduler at {cluster}: {detail}"
            ) from None
        with client:
            yield client
        return
    n = (os.cpu_count() or 1) if workers is None else workers
    with (
        distributed.LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.CRITICAL,  # shutdown chatter is not the user's business
        ) as local,
        distributed.Client(local) as client,
    ):
        yield client


def _snapshots_and_layout(
    run_or_snapshots: Run | Sequence[Snapshot],
) -> tuple[list[Snapshot], str | None]:
    if isinstance(run_or_snapshots, Run):
        return list(run_or_snapshots.snapshots), run_or_snapshots.layout
    return list(run_or_snapshots), None


def merge(
    snapshots: Sequence[Snapshot], results: Sequence[ShardResult]
) -> list[SnapshotStats]:
    """Per-snapshot stats from the shards' results, parameters in each snapshot's own order."""
    found: list[dict[str, ParamStats]] = [{} for _ in snapshots]
    rows: list[dict[str, Any]] = [{} for _ in snapshots]
    for result in results:
        found[result.index].update(result.stats)
        rows[result.index].update(result.rows)
    out = []
    for snap, params, spreads in zip(snapshots, found, rows):
        names = list(snap.tensors)
        missing = [n for n in names if n not in params]
        # every parameter is in exactly one item: a gap is a bug, not bad input
        if missing:
            raise RuntimeError(f"no Dask result for {missing[0]!r} of {snap.meta.path}")
        out.append(
            SnapshotStats(
                meta=snap.meta,
                params={n: params[n] for n in names},
                shapes={n: shape_of(snap.tensors[n]) for n in names},
                dtypes={n: dtype_of(snap.tensors[n]) for n in names},
                rows={n: spreads[n] for n in names if n in spreads},
            )
        )
    return out


def preferred_workers(client: Client, count: int) -> list[list[str] | None]:
    """For each of `count` items in time order, the worker it should run on: contiguous runs of
    items per worker, so a worker reduces checkpoint t+1 after t and finds t (the previous one)
    already opened and in its page cache. Only a preference: the scheduler still balances load
    and moves the tasks of a lost worker."""
    workers = sorted(client.scheduler_info(n_workers=-1).get("workers", {}))
    if not workers:
        return [None] * count
    return [[workers[i * len(workers) // count]] for i in range(count)]


def _submit(
    client: Client,
    items: Sequence[WorkItem],
    homes: Sequence[list[str] | None],
    retries: int,
) -> dict[Any, WorkItem]:
    return {
        client.submit(
            reduce_work_item,
            item,
            retries=retries,
            pure=False,
            workers=home,
            # Dask refuses the flag without `workers`: a cluster with no worker registered
            # at this moment (one restarting after a crash) gets plain tasks, which wait for one
            allow_other_workers=home is not None,
        ): item
        for item, home in zip(items, homes)
    }


def _running_any(client: Client, futures: Iterable[Any]) -> bool:
    """Whether some worker is running one of `futures` now."""
    keys = {future.key for future in futures}
    processing = client.processing()
    return any(key in keys for running in processing.values() for key in running)


def run_items(
    client: Client,
    items: Sequence[WorkItem],
    *,
    retries: int = DEFAULT_RETRIES,
    progress: Callable[[int, int], None] | None = None,
    stall_s: float = STALL_S,
) -> list[ShardResult]:
    """Submit every item, collect results as they finish; the first failure cancels the rest.

    Items that no worker runs for `stall_s` seconds (a task the scheduler lost with a dying
    worker, or a cluster with no worker) are submitted once more, to any worker; if they stall
    again, ClusterError.
    """
    distributed = require_distributed()
    total = sum(item.nbytes for item in items)
    futures = _submit(client, items, preferred_workers(client, len(items)), retries)
    submitted = list(futures)
    results: list[ShardResult] = []
    done = 0
    resubmitted = False
    idle_since = time.monotonic()
    try:
        while futures:
            try:
                finished, _ = distributed.wait(
                    list(futures), timeout=min(STALL_POLL_S, stall_s), return_when="FIRST_COMPLETED"
                )
            except TimeoutError:
                finished = set()
            now = time.monotonic()
            if not finished:
                if _running_any(client, futures):
                    idle_since = now
                elif now - idle_since >= stall_s:
                    if resubmitted:
                        raise ClusterError(
                            f"no Dask worker ran the {len(futures)} remaining items for "
                            f"{stall_s:g} s, twice; check that the cluster has workers and "
                            "their logs"
                        )
                    stalled = list(futures.values())
                    client.cancel(list(futures))
                    futures = _submit(client, stalled, [None] * len(stalled), retries)
                    submitted.extend(futures)
                    resubmitted, idle_since = True, now
                continue
            idle_since = now
            for future in finished:
                item = futures.pop(future)
                try:
                    result = future.result()
                except distributed.KilledWorker:
                    raise ClusterError(
                        f"Dask workers kept dying while reducing {item.current.path} "
                        f"({len(item.names)} parameters); check the workers' memory and logs"
                    ) from None
                if result.error is not None:
                    raise result.error
                results.append(result)
                done += item.nbytes
                if progress is not None:
                    progress(done, total)
    finally:
        client.cancel(submitted)
    return results


def compute_stats_dask(
    run_or_snapshots: Run | Sequence[Snapshot],
    *,
    client: Client,
    device: str = "auto",
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    retries: int = DEFAULT_RETRIES,
    recover_unsafe: bool = False,
    progress: Callable[[int, int], None] | None = None,
    granularity: str = "tensor",
    stall_s: float = STALL_S,
) -> list[SnapshotStats]:
    """What `normscope.engine.compute_stats` returns, reduced on the Dask cluster behind `client`.

    One task per (snapshot, shard), with the previous snapshot's same parameters for the dot
    products; workers re-open the files by path (see `normscope.distributed.items`). A live log's
    run carries its stats already and is returned as is. `device` applies on the workers;
    `stall_s` as for `run_items`.
    """
    if isinstance(run_or_snapshots, Run) and run_or_snapshots.stats is not None:
        return list(run_or_snapshots.stats)
    if shard_bytes < 1:
        raise ConfigError(f"shard size must be positive, got {shard_bytes} bytes")
    snapshots, layout = _snapshots_and_layout(run_or_snapshots)
    items = plan_items(
        snapshots,
        layout=layout,
        shard_bytes=shard_bytes,
        recover_unsafe=recover_unsafe,
        device=device,
        bucket_bytes=bucket_bytes,
        granularity=granularity,
    )
    results = run_items(client, items, retries=retries, progress=progress, stall_s=stall_s)
    return merge(snapshots, results)


def local_path(path: str | os.PathLike[str]) -> str:
    """`path` as a file-system path; URLs other than file:// are refused with what to do instead."""
    text = os.fspath(path)
    scheme, sep, rest = text.partition("://")
    if not sep or "/" in scheme:
        return text
    if scheme == "file":
        return rest
    raise BadInputError(
        f"{text}: {scheme}:// URLs are not read directly; mount the storage (e.g. s3fs, gcsfuse) "
        "at the same path on the driver and every worker and pass that path"
    )


def load_trajectory_distributed(
    path: str | os.PathLike[str],
    *,
    cluster: str | None = None,
    workers: int | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    every: int = 1,
    device: str = "auto",
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: Callable[[int, int], None] | None = None,
    recover_unsafe: bool = False,
    granularity: str = "tensor",
    one_file_per_epoch: bool = False,
) -> Trajectory:
    """`normscope.api.load_trajectory`, with the tensors reduced on a Dask cluster: the scheduler
    at `cluster` (e.g. "tcp://host:8786"), or a local cluster of `workers` processes."""
    check_granularity(granularity)
    require_distributed()
    check_cluster_options(cluster, workers)
    if every < 1:
        raise BadInputError(f"--every must be at least 1, got {every}")
    run = open_selected_run(local_path(path), include=include, exclude=exclude, every=every,
                            recover_unsafe=recover_unsafe, one_file_per_epoch=one_file_per_epoch)
    if run.stats is None:
        with connect(cluster, workers) as client:
            stats = compute_stats_dask(
                run,
                client=client,
                device=device,
                bucket_bytes=bucket_bytes,
                shard_bytes=shard_bytes,
                recover_unsafe=recover_unsafe,
                progress=progress,
                granularity=granularity,
            )
        run = replace(run, stats=stats)
    return trajectory_from_run(run, granularity=granularity)
