"""torch.distributed.checkpoint directories, written by the real `dcp.save` on one process."""

from __future__ import annotations

import os
import pickle
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from _sources_helpers import (
    adamw,
    fingerprint,
    load_all,
    sgd,
    small_cnn,
    small_mlp,
    train,
)

from normscope.errors import BadInputError, UnsafeCheckpointError
from normscope.snapshot import ORDER_EMBEDDED
from normscope.sources import open_run
from normscope.sources._refs import ChunkedTensorRef


def _save(state, directory):  # type: ignore[no-untyped-def]
    # dcp.save warns "assuming the intent is to save in a single process"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state, checkpoint_id=str(directory))


def test_dcp_directory_of_steps(tmp_path):
    model = small_cnn()
    opt = sgd(model)
    for step in (3, 6):
        train(model, opt, 3, seed=step)
        _save(
            {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step},
            tmp_path / f"step_{step}",
        )
    run = open_run(tmp_path)
    assert run.layout == "dcp" and run.ordering == ORDER_EMBEDDED
    assert [s.meta.step for s in run.snapshots] == [3, 6]
    last = run.snapshots[-1]
    assert set(last.tensors) == {
        k for k, v in model.state_dict().items() if v.is_floating_point()
    }
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            ref = last.tensors[name]
            assert isinstance(ref, ChunkedTensorRef) and ref.shape == tuple(value.shape)
            assert torch.equal(ref.load(), value)
    assert last.meta.optimizer == "SGD"
    (group,) = last.meta.param_groups
    assert (group.lr, group.momentum, group.weight_decay) == (0.05, 0.9, 5e-4)
    buf = last.optimizer_state["0.weight"]["momentum_buffer"].load()
    assert torch.equal(buf, opt.state[model[0].weight]["momentum_buffer"])


def test_single_dcp_directory_with_adam_step_and_epoch(tmp_path):
    model = small_mlp()
    opt = adamw(model)
    train(model, opt, 2)
    _save(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 4},
        tmp_path / "ckpt",
    )
    before = fingerprint(tmp_path)
    run = open_run(tmp_path / "ckpt")
    load_all(run)
    assert fingerprint(tmp_path) == before
    (snap,) = run.snapshots
    assert snap.meta.epoch == 4.0 and snap.meta.optimizer == "AdamW"
    assert snap.optimizer_state["0.weight"]["step"] == 2.0


def test_chunked_tensor_is_assembled_from_its_chunks(tmp_path):
    full = torch.randn(6, 5)
    torch.save(full[:4].clone(), tmp_path / "top.pt")
    torch.save(full[4:].clone(), tmp_path / "bottom.pt")
    chunks = (
        ((0, 0), (4, 5), lambda: torch.load(tmp_path / "top.pt", weights_only=True)),
        ((4, 0), (2, 5), lambda: torch.load(tmp_path / "bottom.pt", weights_only=True)),
    )
    ref = ChunkedTensorRef("w", (6, 5), "float32", chunks)
    assert torch.equal(ref.load(), full) and ref.nbytes == 120
    assert torch.equal(ref.load_rows(3, 6), full[3:6])


def test_metadata_that_would_run_code_is_refused(tmp_path):
    model = small_mlp()
    _save({"model": model.state_dict()}, tmp_path / "ckpt")
    marker = tmp_path / "code_ran"

    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (open, (str(marker), "w"))

    (tmp_path / "ckpt" / ".metadata").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(UnsafeCheckpointError, match=r"io\.open"):
        open_run(tmp_path / "ckpt")
    assert not marker.exists()


def test_truncated_distcp_file(tmp_path):
    _save({"model": small_mlp().state_dict()}, tmp_path / "ckpt")
    (shard,) = [p for p in os.listdir(tmp_path / "ckpt") if p.endswith(".distcp")]
    data = (tmp_path / "ckpt" / shard).read_bytes()
    (tmp_path / "ckpt" / shard).write_bytes(data[: len(data) // 2])
    run = open_run(
        tmp_path / "ckpt"
    )  # metadata is fine: the damage shows when a tensor is read
    with pytest.raises(BadInputError, match="truncated|cannot read item"):
        load_all(run)


def test_incomplete_save_without_metadata_is_skipped(tmp_path):
    model = small_mlp()
    _save({"model": model.state_dict(), "step": 1}, tmp_path / "s1")
    _save({"model": model.state_dict(), "step": 2}, tmp_path / "s2")
    os.remove(tmp_path / "s2" / ".metadata")  # a save that crashed before finishing
    run = open_run(tmp_path)
    assert [s.meta.step for s in run.snapshots] == [1]
    assert any("incomplete" in w for w in run.warnings)


def test_name_keyed_optimizer_state_from_distributed_state_dict(tmp_path):
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model = small_mlp()
    opt = adamw(model)
    train(model, opt, 2)
    model_sd, optim_sd = get_state_dict(model, opt)
    assert isinstance(
        optim_sd["param_groups"][0]["params"][0], str
    )  # keyed by name, not position
    _save({"model": model_sd, "optim": optim_sd, "step": 2}, tmp_path / "ckpt")
    run = open_run(tmp_path / "ckpt")
    (snap,) = run.snapshots
    assert snap.meta.param_groups[0].params == tuple(
        n for n, _ in model.named_parameters()
    )
    for name, param in model.named_parameters():
        assert torch.equal(
            snap.optimizer_state[name]["exp_avg"].load(), opt.state[param]["exp_avg"]
        )
    assert run.warnings == []


_TWO_RANK_SAVE = """
import os, sys, torch, torch.distributed as dist, torch.multiprocessing as mp
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor

def worker(rank, out, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,))
    torch.manual_seed(0)
    w, b = torch.randn(6, 5), torch.randn(7)
    model = {"w": distribute_tensor(w, mesh, [Shard(0)]), "b": distribute_tensor(b, mesh, [Shard(0)]),
             "r": distribute_tensor(torch.ones(3), mesh, [Replicate()])}
    dcp.save({"model": model, "step": 9}, checkpoint_id=out)
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1], int(sys.argv[2])), nprocs=2)
"""


@pytest.mark.slow
def test_tensors_sharded_across_two_ranks_are_assembled(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "save.py"
    script.write_text(_TWO_RANK_SAVE)
    subprocess.run([sys.executable, str(script), str(tmp_path / "ckpt"), str(port)], check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    assert sorted(
        p for p in os.listdir(tmp_path / "ckpt") if p.endswith(".distcp")
    ) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    (snap,) = open_run(tmp_path / "ckpt").snapshots
    torch.manual_seed(0)
    w, b = torch.randn(6, 5), torch.randn(7)
    ref = snap.tensors["w"]
    assert [(c[0], c[1]) for c in ref.chunks] == [((0, 0), (3, 5)), ((3, 0), (3, 5))]
    assert torch.equal(ref.load(), w) and torch.equal(ref.load_rows(2, 5), w[2:5])
    assert torch.equal(snap.tensors["b"].load(), b)
    assert torch.equal(snap.tensors["r"].load(), torch.ones(3))
    assert snap.meta.step == 9


def test_metadata_naming_a_file_outside_the_checkpoint(tmp_path):
    import dataclasses

    _save({"model": small_mlp().state_dict()}, tmp_path / "ckpt")
    # our own, trusted file: rewrite its storage paths to escape the directory
    metadata = dcp.FileSystemReader(str(tmp_path / "ckpt")).read_metadata()
    metadata.storage_data = {
        k: dataclasses.replace(v, relative_path="../../outside.distcp")
        for k, v in metadata.storage_data.items()
    }
    (tmp_path / "ckpt" / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(BadInputError, match="points outside its directory"):
        open_run(tmp_path / "ckpt")
