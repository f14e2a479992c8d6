"""Hugging Face Trainer `checkpoint-N/` directories, written the way the Trainer writes them."""

from __future__ import annotations

import json
import os
import pickle

import torch
from _sources_helpers import fingerprint, load_all, small_mlp, train
from safetensors.torch import save_file

from normscope.snapshot import ORDER_TRAINER_STATE
from normscope.sources import open_run


class _WouldRunCode:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


def _hf_optimizer(model):  # type: ignore[no-untyped-def]
    """The Trainer's AdamW groups: decay for weights, none for biases and LayerNorm (no param_names)."""
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                              {"params": no_decay, "weight_decay": 0.0}], lr=5e-4)  # fmt: skip


def _write_run(root, steps=(10, 20, 30), weights="safetensors", marker=None):  # type: ignore[no-untyped-def]
    model = small_mlp()
    opt = _hf_optimizer(model)
    done = 0
    for i, step in enumerate(steps):
        train(model, opt, step - done, seed=i)
        done = step
        ckpt = root / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        sd = {k: v.contiguous() for k, v in model.state_dict().items()}
        if weights == "safetensors":
            save_file(sd, ckpt / "model.safetensors", metadata={"format": "pt"})
        else:
            torch.save(sd, ckpt / "pytorch_model.bin")
        torch.save(opt.state_dict(), ckpt / "optimizer.pt")
        state = {
            "global_step": step,
            "epoch": step / 40,
            "max_steps": 40,
            "log_history": [],
        }
        (ckpt / "trainer_state.json").write_text(json.dumps(state))
        if marker is not None:
            (ckpt / "training_args.bin").write_bytes(
                pickle.dumps(_WouldRunCode(str(marker)))
            )
    return model, opt


def test_a_trainer_state_without_a_usable_global_step_is_named(tmp_path):
    _write_run(tmp_path, steps=(10, 20, 30))
    state = tmp_path / "checkpoint-20" / "trainer_state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "global_step": "x"}))
    run = open_run(tmp_path)
    assert [s.meta.step for s in run.snapshots] == [10, 20, 30]
    assert ("2 of 3 snapshots have a global_step in their trainer_state.json; checkpoint-20 has none: "
            "ordered by filename instead") in run.warnings


def test_checkpoint_dirs_ordered_by_trainer_state_with_adamw_state(tmp_path):
    marker = tmp_path / "code_ran"
    model, opt = _write_run(tmp_path / "out", marker=marker)
    run = open_run(tmp_path / "out")
    load_all(run)
    assert not marker.exists()  # training_args.bin was never unpickled
    assert run.layout == "hf-trainer" and run.ordering == ORDER_TRAINER_STATE
    assert [s.meta.step for s in run.snapshots] == [10, 20, 30]
    assert [s.meta.epoch for s in run.snapshots] == [0.25, 0.5, 0.75]
    last = run.snapshots[-1]
    assert last.meta.optimizer == "AdamW"
    decay, no_decay = last.meta.param_groups
    assert (
        decay.weight_decay == 0.01 and no_decay.weight_decay == 0.0 and decay.lr == 5e-4
    )
    # safetensors sorts its keys, so model order is lost; the module tree its names describe has
    # one walk that fits the saved shapes, and every parameter gets its own state
    assert decay.params == ("0.weight", "3.weight")
    assert no_decay.params == ("0.bias", "1.weight", "1.bias", "3.bias")
    params = dict(model.named_parameters())
    for name, param in params.items():
        assert torch.equal(last.optimizer_state[name]["exp_avg"].load(), opt.state[param]["exp_avg"])
        assert last.optimizer_state[name]["step"] == 30.0
    assert not any("dropped" in w for w in run.warnings)


def test_pytorch_model_bin_keeps_order_so_interleaved_groups_map_fully(tmp_path):
    model, opt = _write_run(tmp_path / "out", steps=(6, 12), weights="bin")
    run = open_run(tmp_path / "out")
    last = run.snapshots[-1]
    decay, no_decay = last.meta.param_groups
    # the decay / no-decay groups interleave in model order; matched by shape, no param_names
    assert decay.params == ("0.weight", "3.weight")
    assert no_decay.params == ("0.bias", "1.weight", "1.bias", "3.bias")
    for name, param in model.named_parameters():
        assert torch.equal(
            last.optimizer_state[name]["exp_avg_sq"].load(),
            opt.state[param]["exp_avg_sq"],
        )
    assert run.warnings == []


def test_one_checkpoint_dir_and_pytorch_model_bin(tmp_path):
    model, _ = _write_run(tmp_path / "out", steps=(5,), weights="bin")
    run = open_run(tmp_path / "out" / "checkpoint-5")
    (snap,) = run.snapshots
    assert snap.meta.step == 5
    assert torch.equal(snap.tensors["0.weight"].load(), model[0].weight.detach())


def test_top_level_final_model_is_ignored_with_a_note(tmp_path):
    model, _ = _write_run(tmp_path / "out", steps=(4, 8))
    save_file(model.state_dict(), tmp_path / "out" / "model.safetensors")
    run = open_run(tmp_path / "out")
    assert [s.meta.step for s in run.snapshots] == [4, 8]
    assert any("top of" in w for w in run.warnings)


def test_sharded_safetensors_checkpoint(tmp_path):
    model = small_mlp()
    ckpt = tmp_path / "checkpoint-7"
    ckpt.mkdir()
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    keys = list(sd)
    weight_map = {}
    for i, part_keys in enumerate((keys[:3], keys[3:])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: sd[k] for k in part_keys}, ckpt / shard)
        weight_map |= dict.fromkeys(part_keys, shard)
    (ckpt / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    (ckpt / "trainer_state.json").write_text(
        json.dumps({"global_step": 7, "epoch": 1.0})
    )
    run = open_run(tmp_path)
    (snap,) = run.snapshots
    assert set(snap.tensors) == set(sd) and snap.meta.step == 7
    assert snap.meta.path == os.fspath(ckpt)


def test_nothing_in_the_run_is_modified(tmp_path):
    _write_run(tmp_path / "out", marker=tmp_path / "code_ran")
    before = fingerprint(tmp_path / "out")
    load_all(open_run(tmp_path / "out"))
    assert fingerprint(tmp_path / "out") == before


def test_model_sharded_into_bin_files_is_one_snapshot(tmp_path):
    model = small_mlp()
    sd = model.state_dict()
    keys = list(sd)
    weight_map = {}
    for i, part in enumerate((keys[:2], keys[2:])):
        shard = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({k: sd[k] for k in part}, tmp_path / shard)
        weight_map |= dict.fromkeys(part, shard)
    (tmp_path / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    run = open_run(tmp_path)
    (snap,) = run.snapshots
    assert set(snap.tensors) == set(sd)
    assert torch.equal(snap.tensors["3.weight"].load(), sd["3.weight"])


def test_numbered_layers_of_one_shape_are_mapped_in_index_order(tmp_path):
    model = torch.nn.Sequential(
        *(torch.nn.Linear(8, 8) for _ in range(12))
    )  # 10.weight sorts after 9
    opt = _hf_optimizer(model)
    train(model, opt, 2)
    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    save_file(model.state_dict(), ckpt / "model.safetensors")
    torch.save(opt.state_dict(), ckpt / "optimizer.pt")
    (ckpt / "trainer_state.json").write_text(
        json.dumps({"global_step": 2, "epoch": 1.0})
    )
    run = open_run(tmp_path)
    (snap,) = run.snapshots
    assert run.warnings == []  # every parameter mapped
    for name, param in model.named_parameters():
        assert torch.equal(
            snap.optimizer_state[name]["exp_avg"].load(), opt.state[param]["exp_avg"]
        ), name
