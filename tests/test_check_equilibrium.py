"""Equilibrium ratio bounds (check) and the invariance/equilibrium report sections, on the SGD sample run."""

from __future__ import annotations

import math

import pytest

from normscope.analysis.equilibrium import analyze_equilibrium
from normscope.api import load_trajectory
from normscope.check import run_check
from normscope.check.session import check_path
from normscope.config import CheckConfig


@pytest.fixture(scope="module")
def sgd(sgd_run_dir):
    return load_trajectory(sgd_run_dir)


@pytest.fixture(scope="module")
def settled(sgd):
    _, report = analyze_equilibrium(sgd)
    ratios = {layer.param: layer.settled_ratio for layer in report.layers}
    assert ratios and all(math.isfinite(r) for r in ratios.values())  # the three BN-followed convs
    return ratios


def test_bounds_around_the_measured_ratios_pass(sgd, settled):
    low, high = min(settled.values()), max(settled.values())
    result = run_check(sgd, CheckConfig(nonfinite=False, equilibrium_min_ratio=low * 0.99,
                                        equilibrium_max_ratio=high * 1.01))
    assert result.passed and {f.param for f in result.findings} == set(settled)
    assert {f.param: f.value for f in result.findings} == pytest.approx(settled)


def test_a_tighter_lower_bound_fails_exactly_the_slow_layers(sgd, settled):
    cut = sorted(settled.values())[1]  # one layer below, the rest at or above
    result = run_check(sgd, CheckConfig(nonfinite=False, equilibrium_min_ratio=cut))
    assert {f.param for f in result.errors} == {p for p, r in settled.items() if r < cut}
    assert all(f.config_key == "check.equilibrium_min_ratio" and f.limit == cut for f in result.errors)
    high = run_check(sgd, CheckConfig(nonfinite=False, equilibrium_max_ratio=cut))
    assert {f.param for f in high.errors} == {p for p, r in settled.items() if r > cut}


def test_no_invariant_layer_left_fails_the_rule(sgd_run_dir):
    outcome = check_path(sgd_run_dir, environ={}, flags={"include": ("head.*",), "every": 10,
                                                         "check.equilibrium_min_ratio": 0.5})
    (finding,) = [f for f in outcome.result.findings if f.rule == "equilibrium"]
    assert not finding.passed and "no scale-invariant layer" in finding.message


def test_report_shows_verdicts_with_evidence_and_the_equilibrium(sgd, settled):
    from normscope.report.documents.assemble import run_report

    report = run_report(sgd)
    sections = {s.title: s for s in report.sections}
    verdicts = sections["Scale-invariant layers"].blocks[1]
    by_param = {row[0]: row for row in verdicts.rows}
    for param in settled:
        assert by_param[param][2] == "invariant" and by_param[param][5]  # verdict with its evidence
    assert by_param["head.weight"][2] != "invariant"
    assert "Equilibrium of scale-invariant layers" in sections
    assert {"equilibrium", "equilibrium_ratio"} <= {f.name for f in report.figures}
