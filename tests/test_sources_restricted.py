"""Opt-in recovery of tensors from torch files that weights_only refuses, and its malicious inputs."""

from __future__ import annotations

import argparse
import os

import pytest
import torch
from _sources_helpers import fingerprint, load_all, sgd, small_cnn, train

from normscope.errors import UnsafeCheckpointError
from normscope.sources import open_run


class RunsOpen:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


class RunsShell:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_default_still_refuses(tmp_path):
    torch.save(
        {"state_dict": small_cnn().state_dict(), "hp": argparse.Namespace(lr=0.1)},
        tmp_path / "a.ckpt",
    )
    with pytest.raises(UnsafeCheckpointError, match="argparse.Namespace"):
        open_run(tmp_path / "a.ckpt")


def test_namespace_in_hyper_parameters_is_left_inert(tmp_path):
    model = small_cnn()
    opt = sgd(model)
    train(model, opt, 2)
    torch.save({"epoch": 0, "global_step": 2, "pytorch-lightning_version": "2.6.6",
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "optimizer_states": [opt.state_dict()],
                "hyper_parameters": {"args": argparse.Namespace(lr=0.05)}},
               tmp_path / "epoch=0-step=2.ckpt")  # fmt: skip
    run = open_run(tmp_path, recover_unsafe=True)
    assert run.layout == "lightning"
    (snap,) = run.snapshots
    assert snap.meta.step == 2 and snap.meta.optimizer == "SGD"
    assert torch.equal(snap.tensors["0.weight"].load(), model[0].weight.detach())
    assert any("left inert: argparse.Namespace" in w for w in run.warnings)


def test_whole_pickled_module_gives_its_state_dict_back(tmp_path):
    model = small_cnn()
    torch.save(model, tmp_path / "model.pt")
    (snap,) = open_run(tmp_path / "model.pt", recover_unsafe=True).snapshots
    expected = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    assert set(snap.tensors) == set(expected)
    for name, value in expected.items():
        assert torch.equal(snap.tensors[name].load(), value)


@pytest.mark.parametrize("exploit", [RunsOpen, RunsShell])
def test_code_in_the_pickle_never_runs(tmp_path, exploit):
    marker = tmp_path / "code_ran"
    ckpt = tmp_path / "ckpts"
    ckpt.mkdir()
    torch.save(
        {"model": small_cnn().state_dict(), "step": 3, "payload": exploit(str(marker))},
        ckpt / "c.pt",
    )
    before = fingerprint(ckpt)
    run = open_run(ckpt, recover_unsafe=True)
    load_all(run)
    assert not marker.exists()
    assert fingerprint(ckpt) == before
    assert run.snapshots[0].meta.step == 3
    refused = "io.open" if exploit is RunsOpen else f"{os.system.__module__}.system"
    assert any(refused in w for w in run.warnings)


def test_torchscript_archive_is_refused(tmp_path):
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "scripted.pt")
    with pytest.raises(UnsafeCheckpointError):
        open_run(tmp_path / "scripted.pt", recover_unsafe=True)


def test_legacy_format_is_not_recovered(tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"model": small_cnn().state_dict(), "x": RunsShell(str(marker))}, tmp_path / "old.pt",
               _use_new_zipfile_serialization=False)  # fmt: skip
    with pytest.raises(UnsafeCheckpointError):
        open_run(tmp_path / "old.pt", recover_unsafe=True)
    assert not marker.exists()
