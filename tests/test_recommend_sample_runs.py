"""End to end on the committed sample runs: `load_trajectory` → `recommend_table` → CLI, checked against
the numbers `sample_runs/manifest.json` recorded while training."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from normscope.analysis.recommend import (
    VERDICT_NO_BOUNCE,
    VERDICT_NOT_YET,
    recommend_table,
)
from normscope.api import load_trajectory
from normscope.cli import app

SAMPLES = Path(__file__).resolve().parents[1] / "sample_runs"
MANIFEST = json.loads((SAMPLES / "manifest.json").read_text())


@pytest.fixture(scope="module")
def sgd_traj():
    return load_trajectory(SAMPLES / "digits_bn_cnn_sgd", device="cpu")


def test_sgd_run_norms_are_the_ones_measured_in_training(sgd_traj):
    rec = recommend_table(sgd_traj.table)
    recorded = MANIFEST["runs"]["digits_bn_cnn_sgd"]["epochs"]
    assert rec.series.epochs == tuple(e["epoch"] for e in recorded)
    assert rec.series.norm_sq == pytest.approx([e["weight_norm_sq"] for e in recorded], rel=1e-6)  # fp32 in training
    assert rec.series.epoch_source == "recorded epoch" and rec.series.include_kinds == ("weight",)
    assert rec.series.steps_per_epoch == pytest.approx(MANIFEST["runs"]["digits_bn_cnn_sgd"]["steps_per_epoch"])


def test_sgd_run_plateau_wiggle_is_noise_and_the_recorded_decay(sgd_traj):
    rec = recommend_table(sgd_traj.table)
    cfg = MANIFEST["runs"]["digits_bn_cnn_sgd"]["config"]
    norms = np.array([e["weight_norm_sq"] for e in MANIFEST["runs"]["digits_bn_cnn_sgd"]["epochs"]])
    decay = cfg["decay_epochs"][0]

    # the exact rule fires on the plateau's noise several times before the run's own decay
    assert len([d for d in rec.exact.decays if d.reason == "bounce" and d.epoch < decay]) >= 3
    # the plateau's largest wiggle (a 6 % rise over epochs 36-39) is within what the norm's own
    # correlated fluctuations make over a run this long: no bounce, only the budget decay
    plateau = norms[25:decay]
    assert 0.05 < plateau.max() / plateau[: int(np.argmax(plateau)) + 1].min() - 1 < 0.07
    assert rec.robust.bounces == ()
    assert rec.robust.noise_model.tau_source == "relaxation time"
    assert rec.robust.noise_model.correlation_epochs == pytest.approx(125 / 23)
    assert rec.robust.threshold > 0.06
    assert rec.decay_epochs == (round(0.85 * 60),) and rec.decay_intervals == ((51, 51),)
    # the run's own decay (0.2 → 0.02 after epoch 45) came after the 125-step relaxation time
    (past,) = rec.past_decays
    assert (past.epoch, past.lr_before) == (decay, cfg["lr"])
    assert past.lr_after == pytest.approx(cfg["lr"] * cfg["decay_factor"]) and past.premature is False
    expected_relax = (1 - cfg["momentum"]) / (4 * cfg["lr"] * cfg["weight_decay"])
    assert rec.relaxation.steps == pytest.approx(expected_relax)
    # after it, the norm is still relaxing at the small LR: no further decay yet
    assert rec.verdict.status == VERDICT_NOT_YET and "relax" in rec.verdict.evidence[-1]


def test_adamw_hf_run_has_no_bounce_and_gets_the_single_late_decay():
    traj = load_trajectory(SAMPLES / "digits_ln_transformer_adamw", device="cpu")
    rec = recommend_table(traj.table)
    run = MANIFEST["runs"]["digits_ln_transformer_adamw"]
    assert rec.series.epochs == tuple(e["epoch"] for e in run["epochs"])  # 1..20, no epoch-0 checkpoint
    assert rec.robust.bounces == ()
    assert rec.decay_epochs == (round(0.85 * 20),)
    assert rec.base_lr == pytest.approx(run["config"]["lr"])
    assert rec.verdict.status == VERDICT_NO_BOUNCE
    assert "single decay late in training" in rec.advice[0]
    assert any("smooth schedule" in note for note in rec.notes)  # warmup + cosine


def test_cli_on_the_sgd_sample_run(tmp_path):
    png = tmp_path / "sgd.png"
    result = CliRunner().invoke(app, ["recommend", str(SAMPLES / "digits_bn_cnn_sgd"), "--format", "json",
                                      "--device", "cpu", "--texp", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema_version"] == 1 and doc["decay_epochs"] == [51] and doc["robust"]["bounces"] == []
    assert doc["texp"]["steps_per_epoch"] == 23 and png.stat().st_size > 20_000


def test_recommend_reads_the_run_as_analyze_does_with_the_same_options():
    # --include/--exclude/--every choose what of the run is read, as in `analyze`: the advice is
    # the library's on the trajectory loaded with those options, and analyze's table agrees
    run = SAMPLES / "digits_bn_cnn_sgd"
    options = ["--every", "3", "--exclude", "*fc*"]
    result = CliRunner().invoke(app, ["recommend", str(run), "-f", "json", "--device", "cpu", *options])
    assert result.exit_code == 0, result.output
    traj = load_trajectory(run, device="cpu", every=3, exclude=("*fc*",))
    expected = recommend_table(traj.table)
    doc = json.loads(result.stdout)
    assert doc["decay_epochs"] == list(expected.decay_epochs)
    assert doc["exact_decay_epochs"] == list(expected.exact.decay_epochs)
    analyzed = CliRunner().invoke(app, ["analyze", str(run), "-f", "json", "--device", "cpu", *options])
    params = {p["param"] for p in json.loads(analyzed.stdout)["params"]}
    assert params == set(traj.table["param"].unique()) and not any("fc" in p for p in params)
    whole = recommend_table(load_trajectory(run, device="cpu").table)
    assert expected.series.epochs != whole.series.epochs  # the options took effect


def test_recommend_reads_tensorboard_events_with_a_user_tag_pattern(tmp_path):
    SummaryWriter = pytest.importorskip("torch.utils.tensorboard").SummaryWriter
    writer = SummaryWriter(str(tmp_path))
    for step in range(40):
        writer.add_scalar("norms/conv.weight", 3.0 - 0.05 * step + 0.002 * step * step, step)
    writer.close()
    # a logged norm carries no shape, so its kind is "other": counted with --include-kinds all
    result = CliRunner().invoke(app, ["recommend", str(tmp_path), "-f", "json", "--steps-per-epoch", "1",
                                      "--include-kinds", "all", "--lr", "0.1",
                                      "--tag-pattern", r"^norms/(?P<param>.+)$"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["schema_version"] == 1
    bad = CliRunner().invoke(app, ["recommend", str(tmp_path), "--tag-pattern", "no_named_group"])
    assert bad.exit_code == 2 and "(?P<param>" in bad.stderr


def test_recommend_reads_torch_files_holding_other_objects_with_recover_unsafe(tmp_path):
    # a training script's argparse.Namespace beside the weights: refused by default, with the
    # flag that reads it named; read through the restricted unpickler with --recover-unsafe
    import argparse

    import torch

    torch.manual_seed(0)
    weight = torch.randn(8, 4)
    for epoch in range(6):
        weight = weight * (0.9 if epoch < 3 else 1.1)
        torch.save({"model": {"fc.weight": weight.clone()}, "epoch": epoch,
                    "args": argparse.Namespace(lr=0.1)}, tmp_path / f"epoch_{epoch}.pt")
    refused = CliRunner().invoke(app, ["recommend", str(tmp_path), "--lr", "0.1", "-f", "json"])
    assert refused.exit_code == 2 and "--recover-unsafe" in refused.stderr
    assert "Traceback" not in refused.output
    read = CliRunner().invoke(app, ["recommend", str(tmp_path), "--lr", "0.1", "-f", "json",
                                    "--one-file-per-epoch", "--recover-unsafe"])
    assert read.exit_code == 0, read.output
    assert json.loads(read.stdout)["schema_version"] == 1
