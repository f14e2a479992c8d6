"""Per-parameter summaries and --include/--exclude selection, on hand-built data."""

import math

import numpy as np
import pytest

from normscope.analysis.summary import summarize_params, summarize_run
from normscope.api import name_filter, select
from normscope.errors import BadInputError
from normscope.snapshot import ParamStats, Run, SnapshotMeta, SnapshotStats
from normscope.trajectory import build_trajectory


def _snapshot_stats(i, norms, nonfinite=None):
    meta = SnapshotMeta(
        path=f"e{i}.pt", step=i * 5, epoch=float(i), order_source="embedded"
    )
    params = {
        name: ParamStats(
            numel=4,
            norm_sq=n * n,
            nonfinite=(nonfinite or {}).get(name, 0),
            dot_prev=None if i == 0 else 0.5 * n * n,
            diff_sq=None if i == 0 else 0.1,
        )
        for name, n in norms.items()
    }
    shapes = {name: ((2, 2) if name.endswith("weight") else (4,)) for name in norms}
    return SnapshotStats(
        meta=meta, params=params, shapes=shapes, dtypes={n: "float32" for n in norms}
    )


def _traj():
    series = [3.0, 2.0, 1.5, 1.8, 2.5]
    stats = [
        _snapshot_stats(i, {"conv.weight": w, "conv.bias": 1.0})
        for i, w in enumerate(series)
    ]
    stats[-1] = _snapshot_stats(
        4, {"conv.weight": 2.5, "conv.bias": 1.0}, nonfinite={"conv.bias": 2}
    )
    return build_trajectory(stats, layout="test", root="/run", ordering="embedded")


def test_param_summary_first_min_last_change():
    params = {p.param: p for p in summarize_params(_traj())}
    w = params["conv.weight"]
    assert (w.first_norm, w.min_norm, w.last_norm) == (3.0, 1.5, 2.5)
    assert w.min_epoch == 2.0 and w.min_step == 10 and w.min_snapshot == 2
    assert w.rel_change == pytest.approx(2.5 / 3.0 - 1)
    assert w.total_angle_rad > 0
    assert params["conv.bias"].first_nonfinite_snapshot == 4


def test_run_summary_totals_use_weights_and_flag_nonfinite():
    run = summarize_run(_traj())
    assert run.total_kinds == ("weight",)
    assert run.total_norm_first == pytest.approx(3.0)
    assert run.total_norm_min == pytest.approx(1.5) and run.total_norm_min_snapshot == 2
    assert [f.param for f in run.nonfinite] == ["conv.bias"]
    assert run.snapshots == 5 and run.params == 2


def test_name_filter_globs():
    keep = name_filter(include=["layer1.*"], exclude=["*.bias"])
    assert keep("layer1.conv.weight")
    assert not keep("layer1.conv.bias")
    assert not keep("fc.weight")
    assert name_filter()("anything")


def test_select_on_stats_runs_and_empty_selection_is_an_error():
    stats = [
        _snapshot_stats(i, {"conv.weight": 1.0, "conv.bias": 1.0}) for i in range(3)
    ]
    run = Run(root="/r", layout="jsonl", snapshots=[], ordering="log", stats=stats)
    picked = select(run, include=["*.weight"])
    assert all(set(s.params) == {"conv.weight"} for s in picked.stats)
    with pytest.raises(BadInputError, match="no parameter matches"):
        select(run, include=["nothing*"])


def test_angles_are_radians_in_table():
    t = _traj().table
    assert t["angle_rad"].dropna().between(0, math.pi).all()
    assert np.isnan(t.loc[t.snapshot == 0, "angle_rad"]).all()


def _angle_total(rows) -> float:
    """Σ angles, or NaN when an interval after the first snapshot has no dot product to measure it."""
    angles = rows["angle_rad"].to_numpy(dtype=np.float64)
    measured = np.isfinite(angles) | np.isfinite(rows["dot_prev"].to_numpy(dtype=np.float64))
    if len(rows) < 2 or not measured[1:].all():
        return math.nan
    return float(np.nansum(angles))


def _summaries_one_parameter_at_a_time(traj):
    """The plain per-parameter reading of the table that `summarize_params` vectorises."""
    out = {}
    for param, rows in traj.table.groupby("param", sort=False):
        rows = rows.sort_values("snapshot", kind="stable")
        norms = rows["norm"].to_numpy(dtype=np.float64)
        finite = np.isfinite(norms)
        low = int(np.nanargmin(np.where(finite, norms, np.nan))) if finite.any() else 0
        bad = rows[rows["nonfinite"] > 0]
        out[param] = (
            float(norms[0]), float(norms[low]), int(rows["snapshot"].iloc[low]),
            float(norms[-1]), _angle_total(rows),
            int(rows["nonfinite"].iloc[-1]),
            int(bad["snapshot"].iloc[0]) if len(bad) else None,
        )
    return out


@pytest.mark.parametrize("which", ["sample", "nonfinite"])
def test_column_wise_summaries_match_a_per_parameter_reading(which, sgd_run_dir):
    if which == "sample":
        from normscope.api import load_trajectory

        traj = load_trajectory(sgd_run_dir, every=5)
    else:  # NaN and Inf norms, a parameter with no finite norm at all, counts in the middle
        stats = [
            _snapshot_stats(i, {"a.weight": w, "b.weight": v, "c.bias": u},
                            nonfinite={"b.weight": i % 2, "c.bias": 1})
            for i, (w, v, u) in enumerate([(3.0, 2.0, math.nan), (math.nan, 1.0, math.inf),
                                           (1.0, math.inf, math.nan), (2.0, 1.0, math.nan)])
        ]
        traj = build_trajectory(stats, layout="test", root="/run", ordering="embedded")
    want = _summaries_one_parameter_at_a_time(traj)
    got = summarize_params(traj)
    assert [p.param for p in got] == list(want)
    for p in got:
        assert (p.first_norm, p.min_norm, p.min_snapshot, p.last_norm, p.total_angle_rad,
                p.nonfinite, p.first_nonfinite_snapshot) == pytest.approx(want[p.param],
                                                                         nan_ok=True), p.param
