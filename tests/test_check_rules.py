"""Each check rule passing and failing on a real tiny training run and on modified copies of it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from reports_support import reduce_states, save_states, train_states, with_nan

from normscope.check import ERROR, WARNING, build_rules, run_check
from normscope.config import CheckConfig
from normscope.errors import BadInputError, ConfigError


@pytest.fixture(scope="module")
def trained():
    return train_states(epochs=6)


@pytest.fixture(scope="module")
def run(trained, tmp_path_factory):
    states, group = trained
    paths = save_states(states, tmp_path_factory.mktemp("run"))
    return reduce_states(states, group, paths)


def weight_norms(traj):
    table = traj.table[traj.table["kind"] == "weight"]
    return table.pivot(index="snapshot", columns="param", values="norm")


def by_status(result, rule):
    out = {}
    for f in result.findings:
        if f.rule == rule:
            out.setdefault(f.status, set()).add(f.subject)
    return out


def test_clean_run_passes_nonfinite_for_every_parameter(run):
    result = run_check(run, CheckConfig())
    assert result.rules == ("nonfinite",)
    assert result.passed and result.exit_code == 0
    assert {f.param for f in result.findings} == set(run.params)


def test_nan_in_a_copy_fails_at_the_snapshot_it_appears(trained, tmp_path):
    states, group = trained
    broken = with_nan(states, snapshot=4, param="3.weight")
    paths = save_states(broken, tmp_path / "broken")
    result = run_check(reduce_states(broken, group, paths), CheckConfig())
    assert not result.passed and result.exit_code == 1
    (bad,) = result.errors
    assert (bad.rule, bad.param, bad.snapshot, bad.path) == ("nonfinite", "3.weight", 4, str(paths[4]))
    assert "first at snapshot 4" in bad.message
    assert not states[4][2]["3.weight"].isnan().any()  # the original run is untouched


def test_growth_bound_fails_exactly_the_layers_that_grew_past_it(run):
    norms = weight_norms(run)
    ratio = norms.iloc[-1] / norms.iloc[0]
    limit = float(ratio.median())  # some layers above, some below: both outcomes on real numbers
    result = run_check(run, CheckConfig(max_growth=limit, nonfinite=False))
    statuses = by_status(result, "growth")
    assert statuses[ERROR] == set(ratio[ratio > limit].index)
    assert statuses["pass"] == set(ratio[ratio <= limit].index)
    worst = max(result.errors, key=lambda f: f.value)
    assert worst.value == pytest.approx(float(ratio.max()))
    assert run_check(run, CheckConfig(max_growth=float(ratio.max()) * 1.01)).passed


def test_max_min_measure_sees_the_peak_not_only_the_end(run):
    norms = weight_norms(run)
    peak = (norms.max() / norms.iloc[0]).max()
    last = (norms.iloc[-1] / norms.iloc[0]).max()
    assert peak > last  # this run's norms rise then fall (weight decay)
    limit = (peak + last) / 2
    assert run_check(run, CheckConfig(max_growth=limit, growth_measure="last_first")).passed
    assert not run_check(run, CheckConfig(max_growth=limit, growth_measure="max_min")).passed


def test_collapse_bound_on_a_copy_with_a_shrunken_layer(trained):
    states, group = trained
    shrunk = [(e, s, {k: (v * 0.01 if k == "0.weight" and i == len(states) - 1 else v) for k, v in st.items()})
              for i, (e, s, st) in enumerate(states)]
    config = CheckConfig(min_growth=0.1)
    assert run_check(reduce_states(states, group), config).passed
    result = run_check(reduce_states(shrunk, group), config)
    assert [f.param for f in result.errors] == ["0.weight"]
    assert result.errors[0].rule == "collapse" and result.errors[0].value < 0.1


def test_total_norm_bounds(run):
    totals = np.sqrt(weight_norms(run).pow(2).sum(axis=1))
    low, high = float(totals.min()), float(totals.max())
    assert run_check(run, CheckConfig(min_total_norm=low * 0.99, max_total_norm=high * 1.01)).passed
    result = run_check(run, CheckConfig(min_total_norm=low * 1.01, max_total_norm=high * 0.99))
    assert {f.scope for f in result.errors} == {"total norm (weight) min", "total norm (weight) max"}
    too_high = next(f for f in result.errors if f.scope.endswith("max"))
    assert too_high.value == pytest.approx(high) and too_high.snapshot == int(totals.idxmax())


def test_baseline_identical_retraining_passes_and_a_changed_run_fails(trained):
    states, group = trained
    train_states.cache_clear()  # really train again: same seed, and CPU training is deterministic
    again, _ = train_states(epochs=6)
    config = CheckConfig(nonfinite=False)
    same = run_check(reduce_states(again, group), config, baseline=reduce_states(states, group))
    assert same.rules == ("baseline",) and same.passed
    assert all(f.value == pytest.approx(0.0, abs=1e-12) for f in same.findings)

    nudged = [(e, s, {k: (v * 1.2 if k == "6.weight" and i >= 3 else v) for k, v in st.items()})
              for i, (e, s, st) in enumerate(states)]
    drift = run_check(reduce_states(nudged, group), config, baseline=reduce_states(states, group))
    assert [(f.param, f.snapshot) for f in drift.errors] == [("6.weight", 3)]
    assert drift.errors[0].value == pytest.approx(0.2)


def test_baseline_with_other_hyperparameters_drifts_everywhere(trained):
    states, group = trained
    other, other_group = train_states(epochs=6, lr=0.05)
    result = run_check(reduce_states(other, other_group), CheckConfig(nonfinite=False, baseline_rtol=0.05),
                       baseline=reduce_states(states, group))
    assert {f.param for f in result.errors} >= {"0.weight", "3.weight", "6.weight"}


def test_baseline_reports_missing_parameters_and_refuses_disjoint_runs(trained):
    states, group = trained
    fewer = [(e, s, {k: v for k, v in st.items() if k != "6.bias"}) for e, s, st in states]
    result = run_check(reduce_states(fewer, group), CheckConfig(nonfinite=False, kinds=()),
                       baseline=reduce_states(states, group))
    assert [f.param for f in result.errors] == ["6.bias"]
    assert "missing from this run" in result.errors[0].message
    late = [(e + 100, s + 10_000, st) for e, s, st in states]
    with pytest.raises(BadInputError, match="share no step"):
        run_check(reduce_states(late, group), CheckConfig(), baseline=reduce_states(states, group))


def test_warn_turns_failures_into_warnings_and_exit_zero(run):
    config = CheckConfig(max_growth=1.0, warn=("growth",))
    result = run_check(run, config)
    assert result.passed and result.exit_code == 0
    assert result.warnings and all(f.severity == WARNING for f in result.warnings)


def test_unknown_rule_in_warn_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown rule"):
        build_rules(dataclasses.replace(CheckConfig(), warn=("growht",)), with_baseline=False)
