"""torch.save files: bare and nested state_dicts, prefixes, optimizer state, ordering, laziness."""

from __future__ import annotations

import os

import pytest
import torch
from _sources_helpers import adamw, load_all, sgd, small_cnn, small_mlp, train
from torch import nn

from normscope.errors import UnsafeCheckpointError
from normscope.snapshot import ORDER_EMBEDDED, ORDER_FILENAME, ORDER_MTIME, Snapshot
from normscope.sources import open_run
from normscope.sources._refs import MappedTensorRef, TorchTensorRef
from normscope.sources._torchio import is_torch_zip, is_torchscript, zip_pickle_bytes


def _save_epochs(tmp_path, n=3, name="epoch_{e}.pt", embed=True):  # type: ignore[no-untyped-def]
    model = small_cnn()
    opt = sgd(model)
    for epoch in range(n):
        train(model, opt, 2, seed=epoch)
        payload = {"model": model.state_dict(), "optimizer": opt.state_dict()}
        if embed:
            payload |= {"epoch": epoch, "step": 2 * (epoch + 1)}
        torch.save(payload, tmp_path / name.format(e=epoch))
    return model


def test_bare_state_dict_single_file(tmp_path):
    model = small_cnn()
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    run = open_run(tmp_path / "weights.pth")
    assert run.layout == "torch"
    (snap,) = run.snapshots
    # num_batches_tracked (int64) is skipped; float buffers are kept
    assert "1.num_batches_tracked" not in snap.tensors
    assert {"1.running_mean", "1.running_var", "0.weight", "4.weight"} <= set(
        snap.tensors
    )
    for name, ref in snap.tensors.items():
        # nothing is built on open: tensors stay where they lie in the file's mapping
        assert isinstance(ref, MappedTensorRef if ref.numel > 1 else TorchTensorRef)
        assert torch.equal(ref.load(), model.state_dict()[name])
        assert ref.numel == ref.load().numel() and ref.nbytes == ref.numel * 4
    assert snap.meta.optimizer is None and snap.optimizer_state == {}


def test_nested_checkpoint_with_sgd_state_orders_by_embedded_step(tmp_path):
    model = _save_epochs(tmp_path, n=3)
    run = open_run(tmp_path)
    assert run.ordering == ORDER_EMBEDDED
    assert [s.meta.step for s in run.snapshots] == [2, 4, 6]
    assert [s.meta.epoch for s in run.snapshots] == [0.0, 1.0, 2.0]
    last: Snapshot = run.snapshots[-1]
    assert last.meta.optimizer == "SGD"
    (group,) = last.meta.param_groups
    assert (group.lr, group.momentum, group.weight_decay, group.nesterov) == (
        0.05,
        0.9,
        5e-4,
        False,
    )
    # state is mapped to parameters only, in model.parameters() order; BN running stats excluded
    params = [n for n, _ in model.named_parameters()]
    assert list(group.params) == params
    assert set(last.optimizer_state) == set(params)
    buf = last.optimizer_state["0.weight"]["momentum_buffer"].load()
    assert buf.shape == model[0].weight.shape
    assert run.warnings == []


def test_adamw_state_and_type(tmp_path):
    model = small_mlp()
    opt = adamw(model)
    train(model, opt, 3)
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(),
                "global_step": 3}, tmp_path / "ckpt.pt")  # fmt: skip
    (snap,) = open_run(tmp_path / "ckpt.pt").snapshots
    assert snap.meta.optimizer == "AdamW"
    (group,) = snap.meta.param_groups
    assert (
        group.betas == (0.9, 0.999)
        and group.decoupled_weight_decay is True
        and group.eps == 1e-8
    )
    state = snap.optimizer_state["0.weight"]
    assert state["step"] == 3.0
    expected = opt.state[model[0].weight]
    assert torch.equal(state["exp_avg"].load(), expected["exp_avg"])
    assert torch.equal(state["exp_avg_sq"].load(), expected["exp_avg_sq"])


def test_plain_adam_is_not_adamw(tmp_path):
    model = small_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    train(model, opt, 1)
    torch.save(
        {"state_dict": model.state_dict(), "optimizer": opt.state_dict()},
        tmp_path / "a.pt",
    )
    (snap,) = open_run(tmp_path / "a.pt").snapshots
    assert snap.meta.optimizer == "Adam"
    assert snap.meta.param_groups[0].decoupled_weight_decay is False


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_are_stripped(tmp_path, prefix):
    model = small_mlp()
    sd = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save(sd, tmp_path / "w.pt")
    (snap,) = open_run(tmp_path / "w.pt").snapshots
    assert set(snap.tensors) == set(model.state_dict())


def test_model_prefix_only_stripped_when_every_key_has_it(tmp_path):
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = small_mlp()
            self.head = nn.Linear(2, 1)

    torch.save(Wrapper().state_dict(), tmp_path / "w.pt")
    (snap,) = open_run(tmp_path / "w.pt").snapshots
    assert "model.0.weight" in snap.tensors and "head.weight" in snap.tensors


def test_param_names_saved_by_torch_are_used(tmp_path):
    model = small_mlp()
    decay = [(n, p) for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [(n, p) for n, p in model.named_parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=1e-3)  # fmt: skip
    train(model, opt, 1)
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "c.pt"
    )
    run = open_run(tmp_path / "c.pt")
    (snap,) = run.snapshots
    g0, g1 = snap.meta.param_groups
    assert g0.params == ("0.weight", "3.weight") and g0.weight_decay == 0.1
    assert set(g1.params) == {"0.bias", "1.weight", "1.bias", "3.bias"}
    assert torch.equal(snap.optimizer_state["3.weight"]["exp_avg"].load(),
                       opt.state[model[3].weight]["exp_avg"])  # fmt: skip
    assert run.warnings == []


def test_optimizer_that_does_not_fit_keeps_hyperparameters_and_warns(tmp_path):
    model, other = small_mlp(), small_cnn()
    opt = sgd(other)
    train(other, opt, 1)
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "x.pt"
    )
    run = open_run(tmp_path / "x.pt")
    (snap,) = run.snapshots
    assert snap.optimizer_state == {}
    assert (
        snap.meta.param_groups[0].momentum == 0.9
        and snap.meta.param_groups[0].params == ()
    )
    assert any("could not match" in w for w in run.warnings)


def test_filename_order_when_nothing_embedded(tmp_path):
    _save_epochs(tmp_path, n=3, name="step_{e}0.pt", embed=False)
    os.utime(tmp_path / "step_00.pt", (1e9, 2e9))  # mtime would say otherwise
    run = open_run(tmp_path)
    assert run.ordering == ORDER_FILENAME
    assert [s.meta.step for s in run.snapshots] == [0, 10, 20]


def test_a_step_stored_in_only_some_files_is_said_to_be_missing(tmp_path):
    """The run falls back to the file names, and their numbers give the steps: the user hears which
    file lacks what the others store, since that file is why stronger evidence went unused."""
    _save_epochs(tmp_path, n=4, name="step_{e}0.pt")
    payload = torch.load(tmp_path / "step_20.pt", weights_only=True)
    del payload["epoch"], payload["step"]
    torch.save(payload, tmp_path / "step_20.pt")
    run = open_run(tmp_path)
    assert run.ordering == ORDER_FILENAME
    assert [s.meta.step for s in run.snapshots] == [0, 10, 20, 30]
    assert ("3 of 4 snapshots have a step or epoch stored inside them; step_20.pt has none: "
            "ordered by filename instead") in run.warnings
    _save_epochs(tmp_path, n=4, name="step_{e}0.pt")  # every file stores it again: no such note
    run = open_run(tmp_path)
    assert not any("stored inside them" in w for w in run.warnings)


def test_natural_sort_of_unpatterned_names(tmp_path):
    model = small_mlp()
    for i in (1, 2, 10):
        torch.save(model.state_dict(), tmp_path / f"snap{i}.pt")
    run = open_run(tmp_path)
    assert run.ordering == ORDER_FILENAME
    assert [os.path.basename(s.meta.path) for s in run.snapshots] == [
        "snap1.pt",
        "snap2.pt",
        "snap10.pt",
    ]


def test_mtime_order_as_last_resort(tmp_path):
    model = small_mlp()
    opt = sgd(model)
    for i, name in enumerate(["b.pt", "a.pt", "c.pt"]):
        train(model, opt, 1, seed=i)  # files of one content would be copies of one another
        torch.save(model.state_dict(), tmp_path / name)
        os.utime(tmp_path / name, ns=(10**18 + i, 10**18 + i))
    run = open_run(tmp_path)
    assert run.ordering == ORDER_MTIME
    assert [os.path.basename(s.meta.path) for s in run.snapshots] == [
        "b.pt",
        "a.pt",
        "c.pt",
    ]
    assert any("modification time" in w for w in run.warnings)


def test_duplicate_steps_are_reported(tmp_path):
    model = small_mlp()
    opt = sgd(model)
    for i, name in enumerate(("a.pt", "b.pt")):
        train(model, opt, 1, seed=i)  # different weights: not copies of one another
        torch.save({"model": model.state_dict(), "step": 5}, tmp_path / name)
    run = open_run(tmp_path)
    assert len(run.snapshots) == 2
    assert any("share the same embedded position 5" in w for w in run.warnings)


def test_every_keeps_every_nth_and_the_last(tmp_path):
    model = small_mlp()
    for step in range(7):
        torch.save(
            {"model": model.state_dict(), "step": step}, tmp_path / f"s{step}.pt"
        )
    assert [s.meta.step for s in open_run(tmp_path, every=3).snapshots] == [0, 3, 6]
    assert [s.meta.step for s in open_run(tmp_path, every=4).snapshots] == [0, 4, 6]


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_tensors_are_memory_mapped_not_read(tmp_path):
    torch.save({"w": torch.randn(256, 256)}, tmp_path / "big.pt")
    (snap,) = open_run(tmp_path / "big.pt").snapshots
    address = snap.tensors["w"].load().data_ptr()
    # the tensor's memory is a mapping of the checkpoint file, not a heap copy of its data
    mapped = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            start, stop = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < stop:
                mapped.append(fields[-1])
    assert mapped and os.path.samefile(mapped[0], tmp_path / "big.pt")


def test_legacy_non_zip_file_loads_without_mmap(tmp_path):
    model = small_mlp()
    torch.save(
        model.state_dict(), tmp_path / "old.pt", _use_new_zipfile_serialization=False
    )
    run = open_run(tmp_path / "old.pt")
    (snap,) = run.snapshots
    assert torch.equal(snap.tensors["0.weight"].load(), model[0].weight.detach())
    assert snap.meta.extra["legacy_format"] is True
    assert any("legacy" in w for w in run.warnings)


def test_appearing_and_vanishing_parameters_are_reported_not_fatal(tmp_path):
    model = small_cnn()
    sd = model.state_dict()
    torch.save({"model": sd, "step": 1}, tmp_path / "a.pt")
    grown = dict(sd) | {"5.weight": torch.randn(2, 3)}
    del grown["4.bias"]
    torch.save({"model": grown, "step": 2}, tmp_path / "b.pt")
    run = open_run(tmp_path)
    load_all(run)
    assert "1 parameter(s) appear at step 2: 5.weight" in run.warnings
    assert "1 parameter(s) vanish at step 2: 4.bias" in run.warnings


def test_non_checkpoint_files_in_the_directory_are_ignored(tmp_path):
    torch.save(small_mlp().state_dict(), tmp_path / "w.pt")
    (tmp_path / "notes.txt").write_text("lr sweep 3")
    run = open_run(tmp_path)
    assert len(run.snapshots) == 1
    assert any("notes.txt" in w for w in run.warnings)


def test_repeated_embedded_steps_fall_back_to_names(tmp_path):
    model = small_mlp()
    for step in (20, 100, 3):
        torch.save(
            {"model": model.state_dict(), "step": 0}, tmp_path / f"step_{step}.pt"
        )
    run = open_run(tmp_path)
    assert run.ordering == ORDER_FILENAME
    assert [os.path.basename(s.meta.path) for s in run.snapshots] == [
        "step_3.pt",
        "step_20.pt",
        "step_100.pt",
    ]
    assert [s.meta.step for s in run.snapshots] == [3, 20, 100]
    assert any(
        "embedded positions repeat (0/0.0); ordered by filename instead" in w
        for w in run.warnings
    )


def test_a_model_that_grows_step_by_step_stays_one_run(tmp_path):
    layers: list[nn.Module] = [nn.Linear(4, 4)]
    # each save adds one layer: the first and the last share only 1/4 of their names
    for step in range(1, 5):
        torch.save(
            {"model": nn.Sequential(*layers).state_dict(), "step": step},
            tmp_path / f"s{step}.pt",
        )
        layers.append(nn.Linear(4, 4))
    run = open_run(tmp_path)
    assert len(run.snapshots) == 4
    assert "2 parameter(s) appear at step 4: 3.bias, 3.weight" in run.warnings


def test_a_rewritten_torch_file_is_sniffed_again(tmp_path):
    # The zip directory is parsed once per file and remembered by the file's identity, size
    # and mtime: a file replaced in place must not be judged by its old contents.
    path = tmp_path / "model.pt"
    torch.save(small_mlp().state_dict(), path)
    assert is_torch_zip(str(path)) and not is_torchscript(str(path))
    assert zip_pickle_bytes(str(path))
    scripted = torch.jit.script(nn.Linear(2, 2))
    scripted.save(str(path))
    assert is_torchscript(str(path))
    with pytest.raises(UnsafeCheckpointError, match="TorchScript"):
        open_run(path)
    path.write_bytes(b"not a checkpoint at all")
    assert not is_torch_zip(str(path)) and zip_pickle_bytes(str(path)) is None
