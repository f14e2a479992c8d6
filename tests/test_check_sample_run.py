"""The check rules on the committed sample run (`sample_runs/digits_bn_cnn_sgd`) and modified copies."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch

from normscope.api import load_trajectory
from normscope.check import run_check
from normscope.check.session import check_path
from normscope.config import CheckConfig


@pytest.fixture(scope="module")
def sgd(sgd_run_dir):
    return load_trajectory(sgd_run_dir)


def copy_run(source, target, epochs=None):
    """A copy of the run (only the given epochs' files, if set) that tests may modify."""
    target.mkdir(parents=True)
    for path in sorted(source.glob("epoch_*.pt")):
        if epochs is None or int(path.stem.split("_")[1]) in epochs:
            shutil.copy2(path, target / path.name)
    return target


def edit_checkpoint(path, param, change):
    blob = torch.load(path, weights_only=True)
    blob["model"][param] = change(blob["model"][param].clone())
    torch.save(blob, path)


def test_sample_run_has_no_nonfinite_weights(sgd):
    result = run_check(sgd, CheckConfig())
    assert result.passed
    assert len(result.findings) == sgd.table["param"].nunique()


def test_growth_and_collapse_bounds_split_the_real_layers(sgd):
    weights = sgd.table[sgd.table["kind"] == "weight"]
    norms = weights.pivot(index="snapshot", columns="param", values="norm")
    ratio = norms.iloc[-1] / norms.iloc[0]
    middle = float(ratio.sort_values().iloc[len(ratio) // 2])
    result = run_check(sgd, CheckConfig(nonfinite=False, max_growth=middle, min_growth=middle))
    grew = {f.param for f in result.errors if f.rule == "growth"}
    shrank = {f.param for f in result.errors if f.rule == "collapse"}
    assert grew == set(ratio[ratio > middle].index) and grew
    assert shrank == set(ratio[ratio < middle].index) and shrank


def test_nan_injected_into_a_copy_fails_where_it_was_put(sgd_run_dir, tmp_path):
    run = copy_run(sgd_run_dir, tmp_path / "run", epochs=range(0, 61, 6))
    victim = run / "epoch_030.pt"
    original = hashlib.sha256((sgd_run_dir / "epoch_030.pt").read_bytes()).hexdigest()

    def poison(t):
        t.view(-1)[5] = float("nan")
        return t

    edit_checkpoint(victim, "block2.conv.weight", poison)
    outcome = check_path(run, environ={}, flags={"check.max_growth": 100.0})
    (bad,) = [f for f in outcome.result.errors if f.rule == "nonfinite"]
    assert (bad.param, bad.snapshot, bad.path) == ("block2.conv.weight", 5, str(victim))
    assert "1 non-finite value(s)" in bad.message
    # the growth rule cannot measure a NaN norm and says so instead of passing
    (growth,) = [f for f in outcome.result.errors if f.rule == "growth"]
    assert growth.param == "block2.conv.weight" and "not measurable" in growth.message
    assert hashlib.sha256((sgd_run_dir / "epoch_030.pt").read_bytes()).hexdigest() == original


def test_baseline_against_itself_passes_and_a_scaled_layer_drifts(sgd_run_dir, tmp_path):
    epochs = range(40, 61, 2)
    base = copy_run(sgd_run_dir, tmp_path / "base", epochs)
    changed = copy_run(sgd_run_dir, tmp_path / "changed", epochs)
    for epoch in (56, 58, 60):
        edit_checkpoint(changed / f"epoch_{epoch:03d}.pt", "block3.conv.weight", lambda t: t * 1.1)
    same = check_path(base, environ={}, flags={"check.baseline": str(base)}).result
    assert same.passed and same.rules == ("nonfinite", "baseline")
    drift = check_path(changed, environ={}, flags={"check.baseline": str(base)}).result
    (bad,) = drift.errors
    assert (bad.rule, bad.param) == ("baseline", "block3.conv.weight")
    assert bad.value == pytest.approx(0.1, rel=1e-6)
    assert "at step 1288" in bad.message  # epoch 56 × 23 steps: the first drifted checkpoint


def test_config_file_beside_the_run_is_found_and_applied(sgd_run_dir, tmp_path):
    run = copy_run(sgd_run_dir, tmp_path / "project" / "runs" / "sgd", epochs=range(0, 61, 10))
    (tmp_path / "project" / "pyproject.toml").write_text(
        '[project]\nname = "demo"\n\n[tool.normscope]\nexclude = ["head.*"]\n\n'
        "[tool.normscope.check]\nmax_growth = 1.0\nwarn = [\"growth\"]\n", encoding="utf-8")
    outcome = check_path(run, environ={})
    result = outcome.result
    assert outcome.resolved.file == tmp_path / "project" / "pyproject.toml"
    assert result.passed and result.warnings  # growth failures are warnings here
    assert not any(f.param and f.param.startswith("head.") for f in result.findings)


def test_bounce_rule_follows_the_detected_bounce(sgd):
    import numpy as np
    from _bounce_tables import bounce_curve, noisy, trajectory_from_norms

    from normscope.analysis.bounce import analyze_bounces

    # the sample run's plateau wiggles are within its own correlated noise: no bounce to expect
    assert analyze_bounces(sgd.table).robust.bounces == ()
    assert run_check(sgd, CheckConfig(nonfinite=False, bounce_by_epoch="none")).passed
    (missing,) = run_check(sgd, CheckConfig(nonfinite=False, bounce_by_epoch=45)).errors
    assert "no bounce confirmed by epoch 45" in missing.message
    # a run that does bounce (35 % down to epoch 15, then up 45 %)
    bouncing = trajectory_from_norms({"conv": noisy(bounce_curve(), 0.005, seed=1)})
    (bounce,) = analyze_bounces(bouncing.table).robust.bounces
    assert 13 <= bounce.minimum_epoch <= 17
    config = CheckConfig(nonfinite=False)
    on_time = run_check(bouncing, CheckConfig(nonfinite=False, bounce_by_epoch=bounce.confirmed_epoch))
    assert on_time.passed and on_time.findings[0].value == bounce.confirmed_epoch
    early = run_check(bouncing, CheckConfig(nonfinite=False, bounce_by_epoch=bounce.confirmed_epoch - 1))
    (late,) = early.errors
    assert late.rule == "bounce" and f"minimum at epoch {bounce.minimum_epoch}" in late.message
    never = run_check(bouncing, CheckConfig(nonfinite=False, bounce_by_epoch="none"))
    assert not never.passed and "expected no bounce, found 1" in never.errors[0].message
    assert config.bounce_by_epoch is None and "bounce" not in run_check(bouncing, config).rules
    assert np.isfinite(bounce.confidence)


def test_bounce_rule_on_a_copy_cut_before_the_bounce(sgd_run_dir, tmp_path):
    run = copy_run(sgd_run_dir, tmp_path / "early", epochs=range(21))
    not_due = check_path(run, environ={}, flags={"check.bounce_by_epoch": "30"}).result
    assert not_due.passed
    assert "only reached epoch 20 of the 30 allowed" in not_due.findings[-1].message
    assert check_path(run, environ={}, flags={"check.bounce_by_epoch": "none"}).result.passed
    assert not check_path(run, environ={}, flags={"check.bounce_by_epoch": "15"}).result.passed


def test_bounce_rule_on_too_short_a_run_is_bad_input(sgd_run_dir, tmp_path):
    from normscope.errors import BadInputError

    run = copy_run(sgd_run_dir, tmp_path / "short", epochs=(0, 1))
    with pytest.raises(BadInputError, match="at least 3"):
        check_path(run, environ={}, flags={"check.bounce_by_epoch": "10"})
