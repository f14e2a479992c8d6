"""The Dask backend on a real loopback `distributed.LocalCluster` (2 worker processes, 1 thread
each): same stats as the local engine, work items by path, lost workers retried, bad files
reported like local bad input."""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import pickle
import shutil
import sys
from pathlib import Path

import pandas
import pytest
import torch
from _sources_helpers import adamw, small_cnn, train
from safetensors.torch import save_file

from normscope.api import load_trajectory
from normscope.engine import compute_stats
from normscope.errors import BadInputError, ConfigError, UnsafeCheckpointError
from normscope.snapshot import ParamStats, SnapshotStats
from normscope.sources import open_run

distributed = pytest.importorskip("distributed")

from normscope.distributed import (
    ClusterError,
    compute_stats_dask,
    connect,
    load_trajectory_distributed,
    plan_items,
)
from normscope.distributed.items import SnapshotSource, WorkItem
from normscope.distributed.worker import reduce_work_item

RELATIVE = 1e-12


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=40,
    ) as local:
        yield local


@pytest.fixture
def trained_run(tmp_path) -> Path:
    """A real CNN trained with AdamW, saved (model, optimizer, step) every 3 steps in tmp."""
    run = tmp_path / "trained"
    run.mkdir()
    model = small_cnn()
    optimizer = adamw(model)
    for step in range(0, 12, 3):
        train(model, optimizer, 3, seed=step)
        checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        torch.save({**checkpoint, "step": step + 3}, run / f"step_{step + 3}.pt")
    return run


@pytest.fixture
def copied_run(tmp_path, sgd_run_dir) -> Path:
    """Four real checkpoints of the committed SGD run, copied so a test may damage them."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("epoch_000.pt", "epoch_010.pt", "epoch_020.pt", "epoch_045.pt"):
        shutil.copy(sgd_run_dir / name, run / name)
    return run


@pytest.fixture
def client(cluster):
    with distributed.Client(cluster) as c:
        c.wait_for_workers(2, timeout=60)
        yield c


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=RELATIVE, abs_tol=0.0) or a == b


def assert_same_stats(local: list[SnapshotStats], remote: list[SnapshotStats]) -> None:
    assert len(local) == len(remote)
    for a, b in zip(local, remote):
        assert a.meta == b.meta
        assert list(a.params) == list(b.params)
        assert a.shapes == b.shapes and a.dtypes == b.dtypes
        for name, pa in a.params.items():
            pb = b.params[name]
            for field in ParamStats.__dataclass_fields__:
                assert _close(getattr(pa, field), getattr(pb, field)), (
                    b.meta.path,
                    name,
                    field,
                )


def _save_sharded_run(directory: Path, steps: int = 3) -> Path:
    """A sharded safetensors model per step (two shard files and an index each), bf16 and fp32."""
    directory.mkdir()
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "embed.weight": torch.randn(64, 32, generator=gen),
        "block.0.attn.weight": torch.randn(32, 32, generator=gen).bfloat16(),
        "block.0.mlp.weight": torch.randn(128, 32, generator=gen),
        "block.1.attn.weight": torch.randn(32, 32, generator=gen).bfloat16(),
        "norm.weight": torch.ones(32),
    }
    for step in range(steps):
        keys = list(tensors)
        weight_map = {}
        for i in range(2):
            shard = f"step_{step}-{i + 1:05d}-of-00002.safetensors"
            part = {k: tensors[k].contiguous() for k in keys[i::2]}
            save_file(part, directory / shard, metadata={"step": str(step * 10)})
            weight_map |= dict.fromkeys(part, shard)
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (directory / f"step_{step}.safetensors.index.json").write_text(
            json.dumps(index)
        )
        tensors = {k: (v.float() * 0.9 + 0.01 * torch.randn(v.shape, generator=gen)).to(v.dtype)
                   for k, v in tensors.items()}  # fmt: skip
    return directory


def test_trained_run_in_tmp_matches_local_shard_by_shard(client, trained_run):
    run = open_run(trained_run)
    local = compute_stats(run.snapshots, device="cpu")
    # small shards: every checkpoint becomes several tasks, the dot products pair shard by shard
    shard = 600
    items = plan_items(run.snapshots, layout=run.layout, shard_bytes=shard)
    assert len(items) >= 2 * len(run.snapshots)
    remote = compute_stats_dask(run, client=client, device="cpu", shard_bytes=shard)
    assert_same_stats(local, remote)
    # dot products with the previous checkpoint and Adam's state came back from the workers
    conv = remote[1].params["0.weight"]
    assert None not in (conv.dot_prev, conv.buf_dot, conv.exp_avg_sq_sum)


def test_committed_sample_run_matches_local(client, sgd_run_dir):
    run = open_run(sgd_run_dir, every=6)
    local = compute_stats(run.snapshots, device="cpu")
    progress: list[tuple[int, int]] = []
    remote = compute_stats_dask(
        run, client=client, device="cpu", progress=lambda d, n: progress.append((d, n))
    )
    assert_same_stats(local, remote)
    # one task per checkpoint at the default shard size
    assert len(progress) == len(run.snapshots)
    assert progress[-1][0] == progress[-1][1] > 0


def test_sharded_safetensors_one_task_per_shard_file(client, tmp_path):
    run = open_run(_save_sharded_run(tmp_path / "run"))
    items = plan_items(run.snapshots, layout=run.layout)
    assert len(items) == 2 * len(run.snapshots)
    assert {
        len({run.snapshots[0].tensors[n].path for n in item.names}) for item in items
    } == {1}
    # bare snapshots: workers sniff the layout as open_run does
    remote = compute_stats_dask(list(run.snapshots), client=client, device="cpu")
    assert_same_stats(compute_stats(run.snapshots, device="cpu"), remote)


def _assert_same_rows(local, remote) -> None:
    import numpy as np

    assert len(local) == len(remote)
    for a, b in zip(local, remote):
        assert set(a.rows) == set(b.rows)
        for name, spread in a.rows.items():
            other = b.rows[name]
            assert (other.rows, other.row_numel, other.exact) == (spread.rows, spread.row_numel, spread.exact)
            np.testing.assert_allclose(other.angles, spread.angles, rtol=1e-6, atol=1e-12)
            np.testing.assert_allclose(other.norms, spread.norms, rtol=1e-6)


def test_row_spreads_travel_in_the_work_items(cluster, client, tmp_path, trained_run):
    """At row granularity each item's result carries its shard's per-row spreads (a shard holds
    whole tensors); merged, they are what the local engine computes, on torch files and on
    sharded safetensors alike."""
    for run in (open_run(trained_run), open_run(_save_sharded_run(tmp_path / "sharded"))):
        local = compute_stats(run.snapshots, device="cpu", granularity="row")
        assert any(s.rows for s in local)
        remote = compute_stats_dask(run, client=client, device="cpu", shard_bytes=600, granularity="row")
        assert_same_stats(local, remote)
        _assert_same_rows(local, remote)
    item = plan_items(run.snapshots, layout=run.layout, granularity="row")[2]
    result = reduce_work_item(item)
    assert result.error is None and result.rows and set(result.rows) <= set(item.names)
    traj = load_trajectory_distributed(tmp_path / "sharded", cluster=cluster.scheduler_address, device="cpu",
                                       granularity="row")
    assert traj.granularity == "row" and traj.rows[1]


class _RecordingUnpickler(pickle.Unpickler):
    """Unpickles while noting every module a global is taken from."""

    def __init__(self, blob: bytes) -> None:
        super().__init__(io.BytesIO(blob))
        self.modules: set[str] = set()

    def find_class(self, module: str, name: str):  # type: ignore[no-untyped-def]
        self.modules.add(module)
        return super().find_class(module, name)


def test_work_items_are_plain_descriptions(copied_run):
    run = open_run(copied_run)
    items = plan_items(run.snapshots, layout=run.layout)
    unpickler = _RecordingUnpickler(pickle.dumps(items))
    item = unpickler.load()[1]
    # no tensors, storages or open files travel with a task: only normscope's own dataclasses
    assert unpickler.modules == {"normscope.distributed.items"}
    assert item.current.path == os.path.abspath(run.snapshots[1].meta.path)
    assert item.previous.path == os.path.abspath(run.snapshots[0].meta.path)
    assert item.current.layout == "torch" and item.names == tuple(
        run.snapshots[1].tensors
    )


def test_load_trajectory_on_a_scheduler_address_matches_local(cluster, copied_run):
    kwargs = {"include": ["block*", "head*"], "exclude": ["*.bias"], "every": 2}
    local = load_trajectory(copied_run, device="cpu", **kwargs)
    remote = load_trajectory_distributed(
        copied_run, cluster=cluster.scheduler_address, device="cpu", **kwargs
    )
    assert local.table.columns.tolist() == remote.table.columns.tolist()
    assert len(local.table) == len(remote.table) > 0
    pandas.testing.assert_frame_equal(
        local.table, remote.table, check_exact=False, rtol=RELATIVE
    )
    params = set(remote.table["param"])
    assert params and not any(p.endswith(".bias") for p in params)


class DieOnFirstTask(distributed.WorkerPlugin):
    """Kills its worker process the first time any worker starts a task (marker file: once)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def transition(self, key, start, finish, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if finish == "executing" and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)


def test_worker_dying_mid_run_has_its_task_retried(client, copied_run, tmp_path):
    run = open_run(copied_run)
    marker = tmp_path / "killed"
    client.register_plugin(DieOnFirstTask(str(marker)), name="die-once")
    try:
        # Dask now and then loses the task of the worker killed mid-transition: it is then
        # submitted again after `stall_s` with no worker running it
        remote = compute_stats_dask(run, client=client, device="cpu", retries=2, stall_s=10)
    finally:
        client.unregister_worker_plugin("die-once")
    assert marker.exists()  # a worker really died on a task
    assert_same_stats(compute_stats(run.snapshots, device="cpu"), remote)


def test_items_lost_by_the_scheduler_are_submitted_again(client, copied_run, monkeypatch):
    from normscope.distributed import client as client_module
    from normscope.distributed.worker import reduce_work_item

    real_submit = client_module._submit
    calls = []

    def lose_the_first(client, items, homes, retries):
        calls.append(len(items))
        if len(calls) > 1:
            return real_submit(client, items, homes, retries)
        # pinned to a worker that is not there: the tasks wait, as lost ones do, on no worker
        return {
            client.submit(reduce_work_item, item, pure=False, workers=["tcp://127.0.0.1:9"],
                          allow_other_workers=False): item
            for item in items
        }

    monkeypatch.setattr(client_module, "_submit", lose_the_first)
    run = open_run(copied_run)
    remote = compute_stats_dask(run, client=client, device="cpu", stall_s=0.5)
    assert len(calls) == 2 and calls[0] == calls[1] > 0
    assert_same_stats(compute_stats(run.snapshots, device="cpu"), remote)


def test_items_no_worker_runs_are_submitted_again_then_refused(copied_run, monkeypatch):
    from normscope.distributed import client as client_module

    submitted = []
    real_submit = client_module._submit

    def counting_submit(client, items, homes, retries):
        submitted.append(len(items))
        return real_submit(client, items, homes, retries)

    monkeypatch.setattr(client_module, "_submit", counting_submit)
    run = open_run(copied_run)
    with (
        distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None,
                                 silence_logs=40) as empty,
        distributed.Client(empty) as no_workers,
    ):
        with pytest.raises(ClusterError) as err:
            compute_stats_dask(run, client=no_workers, device="cpu", stall_s=0.5)
    assert len(submitted) == 2 and submitted[0] == submitted[1] > 0  # once more, the same items
    assert "no Dask worker ran the" in str(err.value) and "\n" not in str(err.value)


def test_no_worker_registered_when_items_are_submitted(client, copied_run, monkeypatch):
    # a worker that just died may leave the scheduler with none registered for a moment: the
    # items then go without a preferred worker (Dask refuses allow_other_workers without one)
    from normscope.distributed import client as client_module

    monkeypatch.setattr(client_module, "preferred_workers", lambda _client, count: [None] * count)
    run = open_run(copied_run)
    remote = compute_stats_dask(run, client=client, device="cpu")
    assert_same_stats(compute_stats(run.snapshots, device="cpu"), remote)


def test_file_corrupted_before_a_worker_reads_it_is_bad_input(
    client, copied_run, capsys
):
    import typer

    from normscope.cli._common import handle_errors

    run = open_run(copied_run)  # the driver reads only headers...
    victim = Path(run.snapshots[2].meta.path)
    # ...then the file is damaged before the worker opens it
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 3)
    with pytest.raises(BadInputError) as err:
        compute_stats_dask(run, client=client, device="cpu")
    message = str(err.value)
    assert victim.name in message and "\n" not in message

    @handle_errors
    def analyze_distributed() -> None:
        compute_stats_dask(run, client=client, device="cpu")

    with pytest.raises(typer.Exit) as exit_info:
        analyze_distributed()
    assert exit_info.value.exit_code == 2
    stderr = capsys.readouterr().err
    assert (
        stderr.count("\n") == 1
        and stderr.startswith("normscope: error: ")
        and victim.name in stderr
    )


def test_checkpoint_replaced_after_planning_is_refused(copied_run, tmp_path):
    run = open_run(copied_run)
    items = plan_items(run.snapshots, layout=run.layout, device="cpu")
    other = tmp_path / "other.pt"
    torch.save({"model": {"conv1.weight": torch.zeros(3, 3)}}, other)
    os.replace(other, run.snapshots[1].meta.path)
    result = reduce_work_item(items[1])
    assert isinstance(result.error, BadInputError) and "changed since" in str(
        result.error
    )


def test_path_missing_on_the_worker_is_one_line(tmp_path):
    item = WorkItem(0, SnapshotSource(str(tmp_path / "gone.pt"), "torch"), None, ("w",),
                    (("w", (2,), "float32"),), (), 8)  # fmt: skip
    result = reduce_work_item(item)
    assert isinstance(result.error, BadInputError)
    assert "not visible on this Dask worker" in str(result.error)


def test_unreachable_scheduler_and_bad_options_are_one_line():
    unreachable = connect("tcp://127.0.0.1:9", timeout_s=1)
    with (
        pytest.raises(ClusterError, match="cannot reach the Dask scheduler"),
        unreachable,
    ):
        pass
    with (
        pytest.raises(ConfigError, match="not both"),
        connect("tcp://127.0.0.1:9", workers=2),
    ):
        pass
    with pytest.raises(BadInputError, match="s3:// URLs"):
        load_trajectory_distributed("s3://bucket/run", workers=1)


def test_missing_dask_names_the_extra(monkeypatch, sgd_run_dir):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ConfigError, match=r"pip install 'normscope\[dask\]'"):
        load_trajectory_distributed(sgd_run_dir, workers=1)


def test_recover_unsafe_reaches_the_workers(cluster, client, tmp_path):
    model = small_cnn()
    optimizer = adamw(model)
    for step in (2, 4):
        train(model, optimizer, 2, seed=step)
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "step": step, "args": argparse.Namespace(lr=1e-3)},
                   tmp_path / f"step_{step}.pt")  # fmt: skip
    local = load_trajectory(tmp_path, device="cpu", recover_unsafe=True)
    remote = load_trajectory_distributed(
        tmp_path, cluster=cluster.scheduler_address, device="cpu", recover_unsafe=True
    )
    pandas.testing.assert_frame_equal(
        local.table, remote.table, check_exact=False, rtol=RELATIVE
    )
    # a worker told nothing re-opens with weights_only and refuses, as the local path would
    run = open_run(tmp_path, recover_unsafe=True)
    with pytest.raises(UnsafeCheckpointError, match="argparse.Namespace"):
        compute_stats_dask(run, client=client, device="cpu")
