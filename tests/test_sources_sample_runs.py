"""open_run on the committed sample runs (real training), checked against their manifest."""

from __future__ import annotations

import torch

from normscope.snapshot import ORDER_EMBEDDED, ORDER_TRAINER_STATE
from normscope.sources import open_run


def test_sgd_run(sgd_run_dir, sample_manifest):
    meta = sample_manifest["runs"]["digits_bn_cnn_sgd"]
    run = open_run(sgd_run_dir)
    assert (run.layout, run.ordering, run.warnings) == ("torch", ORDER_EMBEDDED, [])
    assert [s.meta.step for s in run.snapshots] == [e["step"] for e in meta["epochs"]]
    last = run.snapshots[-1]
    (group,) = last.meta.param_groups
    assert last.meta.optimizer == "SGD"
    assert (group.momentum, group.weight_decay) == (
        meta["config"]["momentum"],
        meta["config"]["weight_decay"],
    )
    # every trainable parameter (and nothing else) got its momentum buffer
    with_state = {n for n, s in last.optimizer_state.items() if "momentum_buffer" in s}
    assert with_state == set(group.params)
    assert sum(last.tensors[n].numel for n in with_state) == meta["num_params"]


def test_hf_adamw_run_maps_state_to_the_right_parameters(
    adamw_run_dir, sample_manifest
):
    meta = sample_manifest["runs"]["digits_ln_transformer_adamw"]
    run = open_run(adamw_run_dir)
    assert (run.layout, run.ordering) == ("hf-trainer", ORDER_TRAINER_STATE)
    assert [s.meta.step for s in run.snapshots] == [e["step"] for e in meta["epochs"]]
    last = run.snapshots[-1]
    assert last.meta.optimizer == "AdamW"
    assert [g.weight_decay for g in last.meta.param_groups] == [
        meta["config"]["weight_decay"],
        0.0,
    ]
    # the truth, recorded at training time: optimizer.pt positions, group by group
    truth = [name for group in meta["optimizer_param_names"] for name in group]
    raw = torch.load(
        adamw_run_dir / meta["checkpoints"][-1] / "optimizer.pt", weights_only=True
    )
    assert last.optimizer_state  # the model's weight matrices, at least
    for name, state in last.optimizer_state.items():
        expected = raw["state"][truth.index(name)]["exp_avg"]
        assert torch.equal(state["exp_avg"].load(), expected), name
    # every decayed weight (the matrices the analyses care about) is attributed
    assert set(meta["optimizer_param_names"][0]) <= set(last.optimizer_state)


def test_lightning_run(lightning_run_dir, sample_manifest):
    meta = sample_manifest["runs"]["digits_bn_cnn_lightning"]
    run = open_run(lightning_run_dir)
    assert run.layout == "lightning"
    assert [s.meta.step for s in run.snapshots] == [e["step"] for e in meta["epochs"]]
    assert [s.meta.param_groups[0].lr for s in run.snapshots] == [
        c["optimizer_states"][0]["param_groups"][0]["lr"]
        for c in (torch.load(s.meta.path, weights_only=True) for s in run.snapshots)
    ]
