"""The committed live log (`sample_runs/digits_bn_cnn_live`, written by `sample_runs/train_live.py`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from normscope.live.view import live_frame
from normscope.api import load_trajectory, trajectory_from_run
from normscope.live.log import read_jsonl_log

SAMPLES = Path(__file__).resolve().parent.parent / "sample_runs"
LIVE = SAMPLES / "digits_bn_cnn_live"


@pytest.fixture(scope="module")
def table():
    if not LIVE.exists():
        pytest.skip("sample_runs/digits_bn_cnn_live is not in this checkout")
    return load_trajectory(LIVE).table


def test_end_of_epoch_norms_equal_the_checkpoint_run(table):
    # the same seeded training as digits_bn_cnn_sgd, which saved a checkpoint per epoch
    manifest = json.loads((SAMPLES / "manifest.json").read_text())["runs"]["digits_bn_cnn_sgd"]
    per_epoch = manifest["steps_per_epoch"]
    weights = table[table["kind"] == "weight"].groupby("step")["norm_sq"].sum()
    for record in manifest["epochs"][1:]:
        assert weights[record["step"]] == pytest.approx(record["weight_norm_sq"], rel=1e-6)
        assert table.loc[table["step"] == record["step"], "epoch"].iloc[0] == record["epoch"]
    assert len(weights) == per_epoch * manifest["config"]["epochs"]


def test_lr_decay_and_scale_invariance_are_visible(table):
    lr = table.groupby("epoch")["lr"].first()
    assert lr.loc[45.0] == pytest.approx(0.2) and lr.loc[46.0] == pytest.approx(0.02)
    convs = table[table["param"].str.endswith("conv.weight")]
    cos = convs["grad_dot"] / (convs["norm"] * convs["grad_norm"])
    assert cos.abs().max() < 1e-4  # convs before BatchNorm: <w, g> = 0 to fp32 rounding (1.2e-5)
    head = table[table["param"] == "head.weight"]
    assert (head["grad_dot"] / (head["norm"] * head["grad_norm"])).abs().max() > 0.1


def test_live_frame_near_equilibrium_before_the_decay():
    run = read_jsonl_log(LIVE) if LIVE.exists() else pytest.skip("no sample")
    first_40_epochs = type(run)(root=run.root, layout=run.layout, snapshots=[], ordering=run.ordering,
                                stats=[s for s in run.stats if s.meta.epoch <= 40])
    trajectory = trajectory_from_run(first_40_epochs)
    frame = live_frame(trajectory, recent=23)  # the last epoch before the cut
    conv = next(layer for layer in frame.layers if layer.param == "block2.conv.weight")
    assert conv.scale_invariant
    assert conv.equilibrium_angle_rad == pytest.approx(math.sqrt(2 * 0.2 * 1e-3 / 1.9))
    # measured 0.73: below 1 as analysis.equilibrium finds on the checkpoint run (settled conv
    # layers 0.65–0.81; gradient noise is partly mean-reverting), well inside its 0.5–1.5 band
    assert 0.5 < conv.angle_ratio < 1.0


def test_watch_once_on_the_sample_shows_the_abel_verdict():
    from typer.testing import CliRunner

    from normscope.cli import app

    if not LIVE.exists():
        pytest.skip("no sample")
    result = CliRunner().invoke(app, ["watch", str(LIVE), "--once", "--total-epochs", "60"])
    assert result.exit_code == 0, result.output
    assert "step 1380 · epoch 60" in result.output
    assert "bounce / ABEL at epoch 60:" in result.output and "block2.conv.weight" in result.output


def test_equilibrium_status_for_the_invariant_convs_only():
    from normscope.live.view import equilibrium_status

    if not LIVE.exists():
        pytest.skip("no sample")
    statuses = equilibrium_status(load_trajectory(LIVE))
    # 15 epochs after the LR cut to 0.02 the norm is 0.3 relaxation times into its new phase
    assert statuses == {f"block{i}.conv.weight": "approaching" for i in (1, 2, 3)}
