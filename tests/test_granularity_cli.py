"""`normscope analyze --granularity row` on the committed sample runs. Ground truth: in the BN-CNN every
conv's output channel is normalised by BatchNorm on its own, so each row is scale-invariant and, once
the LR has held a few relaxation times, sits in the equilibrium band; the classifier head, which no
normalization follows, does not. The numbers are checked against the checkpoint files as well."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from normscope.analysis.row_equilibrium import predicted_angle
from normscope.cli import app
from normscope.engine.rows import row_sums
from normscope.row_stats import row_angles

runner = CliRunner()


def _analyze(*args):
    result = runner.invoke(app, ["analyze", *map(str, args), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return result


def test_sgd_sample_run_rows_of_bn_convs_sit_on_the_prediction(sgd_run_dir, sample_manifest):
    doc = json.loads(_analyze(sgd_run_dir, "--granularity", "row", "--format", "json").stdout)
    assert doc["run"]["granularity"] == "row"
    intervals = doc["rows"]["intervals"]
    settled = [r for r in intervals if r["settled"] and r["lr"] == pytest.approx(0.2)]
    assert settled, "the LR of 0.2 holds for 45 epochs, many relaxation times"
    for name in ("block2.conv.weight", "block3.conv.weight"):
        mine = [r for r in settled if r["param"] == name]
        assert np.median([r["within_tolerance"] for r in mine]) >= 0.9, name
        assert 0.5 < np.median([r["angle_ratio_median"] for r in mine]) < 1.5
    head = [r for r in settled if r["param"] == "head.weight"]
    assert np.median([r["within_tolerance"] for r in head]) <= 0.1
    assert "bias" not in {r["param"].rpartition(".")[2] for r in intervals}  # rows need ndim ≥ 2

    # one interval against the files themselves
    cfg = sample_manifest["runs"]["digits_bn_cnn_sgd"]["config"]
    pick = next(r for r in intervals if r["param"] == "block2.conv.weight" and r["snapshot"] == 20)
    before, after = (torch.load(sgd_run_dir / f"epoch_{e:03d}.pt", weights_only=True)["model"]
                     for e in (19, 20))
    angles = row_angles(row_sums(after["block2.conv.weight"], before["block2.conv.weight"]))
    expected = predicted_angle("sgd", pick["lr"], cfg["weight_decay"], cfg["momentum"], pick["steps"])
    assert pick["predicted_angle_rad"] == pytest.approx(expected, rel=1e-9)
    assert pick["angle_ratio_median"] == pytest.approx(np.median(angles) / expected, rel=1e-5)
    within = np.mean((angles >= 0.5 * expected) & (angles <= 1.5 * expected))
    assert pick["within_tolerance"] == pytest.approx(within)


def test_table_view_on_the_adamw_sample_run(adamw_run_dir):
    out = _analyze(adamw_run_dir, "--granularity", "row").stdout
    assert "Per-neuron equilibrium" in out and "blocks.0.attn.qkv.weight" in out
    assert "√(η·C/(2λ))" in out  # the AdamW row-norm prediction is named
    plain = _analyze(adamw_run_dir).stdout
    assert "Per-neuron equilibrium" not in plain


def test_a_log_has_no_rows_in_one_line(sample_runs_dir):
    result = _analyze(sample_runs_dir / "digits_bn_cnn_live", "--granularity", "row", "--format", "json")
    lines = [line for line in result.stderr.splitlines() if "granularity row" in line]
    assert len(lines) == 1 and "per-tensor numbers only" in lines[0]
    doc = json.loads(result.stdout)
    assert doc["run"]["granularity"] == "tensor" and "rows" not in doc


def test_an_unknown_granularity_is_a_usage_error(sgd_run_dir):
    result = runner.invoke(app, ["analyze", str(sgd_run_dir), "--granularity", "neuron"])
    assert result.exit_code == 2 and "granularity" in result.output and "Traceback" not in result.output
