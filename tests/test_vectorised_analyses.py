"""Analyses computed a column at a time give what their per-parameter (per-row) forms give, exactly."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from normscope.analysis.equilibrium import _describe_values
from normscope.analysis.invariance_dynamics import dynamic_evidence, dynamic_evidence_by_param
from normscope.api import load_trajectory

SAMPLE_RUNS = Path(__file__).resolve().parent.parent / "sample_runs"
RUNS = ["digits_bn_cnn_sgd", "digits_ln_transformer_adamw", "digits_bn_cnn_lightning",
        "digits_bn_cnn_live/track.jsonl"]  # fmt: skip


@pytest.fixture(scope="module", params=RUNS)
def table(request) -> pd.DataFrame:
    return load_trajectory(str(SAMPLE_RUNS / request.param)).table


def _same(a, b) -> bool:
    def key(e):  # NaN equal to NaN, every other value bit for bit
        return (e.source, e.verdict, e.detail, "nan" if e.value is not None and math.isnan(e.value) else e.value)

    return [key(e) for e in a] == [key(e) for e in b]


def test_dynamic_evidence_of_the_whole_table_is_each_parameters(table):
    per_param = {name: dynamic_evidence(rows) for name, rows in table.groupby("param", sort=False)}
    by_table = dynamic_evidence_by_param(table)
    assert list(by_table) == list(per_param)
    assert all(_same(by_table[name], per_param[name]) for name in per_param)
    assert sum(map(len, by_table.values())) >= 20  # there is evidence to compare
    # rows in any order: the same
    shuffled = dynamic_evidence_by_param(table.sample(frac=1.0, random_state=0))
    assert all(_same(shuffled[name], by_table[name]) for name in by_table)


def _describe_values_by_groupby(table: pd.DataFrame, column: str) -> str:
    """The pandas form `_describe_values` replaced: a groupby per question."""
    if column not in table or "snapshot" not in table:
        return "–"
    rows = table[["snapshot", "param", column]].dropna(subset=[column])
    if rows.empty:
        return "–"
    rows = rows.assign(**{column: rows[column].astype(float).round(12)})
    per_snapshot = rows.groupby("snapshot", sort=True)[column].nunique()
    if (per_snapshot > 1).any():
        last = rows[rows["snapshot"] == per_snapshot.index[per_snapshot > 1][-1]]
        return "per param group: " + ", ".join(f"{value:.3g}" for value in dict.fromkeys(last[column]))
    over_time = [float(v) for v in rows.groupby("snapshot", sort=True)[column].first()]
    distinct = list(dict.fromkeys(over_time))
    if len(distinct) == 1:
        return f"{distinct[0]:.3g}"
    return (f"{min(distinct):.3g} to {max(distinct):.3g} over the run "
            f"(first {over_time[0]:.3g}, last {over_time[-1]:.3g})")


def test_describe_values_of_the_sample_runs(table):
    for column in ("lr", "weight_decay", "momentum", "beta1", "epoch"):
        assert _describe_values(table, column) == _describe_values_by_groupby(table, column)


def test_describe_values_of_random_tables():
    rng = np.random.default_rng(0)
    choices = [0.1, 0.2, 0.02, 1e-3, 0.0, -0.0, 0.1 + 1e-14, 3.0]
    for _ in range(500):
        snapshots, groups = int(rng.integers(1, 8)), int(rng.integers(1, 5))
        snapshot = np.repeat(np.arange(snapshots), groups)
        values = rng.choice(choices, size=len(snapshot))
        if rng.random() < 0.5:  # one value per snapshot: a schedule
            values = np.repeat(rng.choice(choices, size=snapshots), groups)
        values[rng.random(len(values)) < 0.2] = np.nan
        order = rng.permutation(len(snapshot))
        table = pd.DataFrame({"snapshot": snapshot[order], "param": [f"p{i}" for i in range(len(order))],
                              "lr": values[order]})  # fmt: skip
        assert _describe_values(table, "lr") == _describe_values_by_groupby(table, "lr")


def test_next_norm_from_the_layers_by_parent_is_the_full_scans(table):
    from normscope.analysis import invariance_structure as structure

    for rows in (table, table.sort_values(["snapshot", "param"], kind="stable")):  # as the file had them, sorted
        layers = structure._layers_in_order(rows)
        siblings_of: dict = {}
        for layer in layers:
            siblings_of.setdefault(structure._parent(layer.name), []).append(layer)
        for i, layer in enumerate(layers):
            weight = layer.params.get("weight")
            channels = weight[1][0] if weight is not None and len(weight[1]) >= 2 else None
            for sorted_names in (False, True):
                assert (structure._next_norm(layers, i, channels, sorted_names, siblings_of)
                        == structure._next_norm(layers, i, channels, sorted_names))


def _weight_stats_by_groupby(trajectory, kinds):
    """The pandas form `weights._nonfinite` and `weights._growth` replaced: a frame per parameter."""
    from normscope.analysis.weights import NonFiniteParam, ParamGrowth, _growth_ratios, selected_rows

    nonfinite = []
    for param, rows in trajectory.table.groupby("param", sort=False):
        bad = rows[(rows["nonfinite"] > 0) | ~np.isfinite(rows["norm"].to_numpy(dtype=float))]
        nonfinite.append(NonFiniteParam(
            param=str(param), layer=str(rows["layer"].iloc[0]), snapshots=len(rows), bad_snapshots=len(bad),
            first_bad_snapshot=None if bad.empty else int(bad["snapshot"].iloc[0]),
            first_bad_count=0 if bad.empty else int(bad["nonfinite"].iloc[0])))
    growth = []
    for param, group in selected_rows(trajectory, kinds).groupby("param", sort=False):
        group = group.sort_values("snapshot")
        norms = group["norm"].to_numpy(dtype=float)
        layer = str(group["layer"].iloc[0])
        finite = bool(np.isfinite(norms).all())
        if len(norms) < 2 or not finite:
            growth.append(ParamGrowth(str(param), layer, len(norms), finite))
            continue
        snapshots = group["snapshot"].to_numpy()
        last, at_last, _, _ = _growth_ratios(norms, "last_first")
        high, at_high, low, at_low = _growth_ratios(norms, "max_min")
        growth.append(ParamGrowth(str(param), layer, len(norms), finite, last, int(snapshots[at_last]),
                                  high, int(snapshots[at_high]), low, int(snapshots[at_low])))
    return tuple(nonfinite), tuple(growth)


@pytest.mark.parametrize("run", RUNS)
def test_weight_stats_of_the_whole_table_are_each_parameters(run):
    import copy

    from normscope.analysis.weights import weight_stats

    trajectory = load_trajectory(str(SAMPLE_RUNS / run))
    broken = copy.copy(trajectory)
    rows = trajectory.table.sample(frac=1.0, random_state=1).copy()  # rows in any order
    rows.loc[rows.index[:7], "nonfinite"] = 3
    rows.loc[rows.index[7:12], "norm"] = np.nan
    broken.table = rows
    for traj in (trajectory, broken):
        for kinds in (("weight",), (), ("norm", "bias")):
            stats = weight_stats(traj, kinds)
            assert repr((stats.nonfinite, stats.growth)) == repr(_weight_stats_by_groupby(traj, kinds))
