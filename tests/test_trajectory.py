"""The trajectory table built from hand-made per-snapshot stats."""

import math

import numpy as np
import pytest

from normscope.snapshot import ParamGroup, ParamStats, SnapshotMeta, SnapshotStats
from normscope.trajectory import (
    COLUMNS,
    angle_between,
    build_trajectory,
    kind_of,
    layer_of,
)


def _stats(index, vectors, prev=None, groups=()):
    params, shapes, dtypes = {}, {}, {}
    for name, v in vectors.items():
        v = np.asarray(v, dtype=np.float64)
        p = (
            None
            if prev is None or name not in prev
            else np.asarray(prev[name], dtype=np.float64)
        )
        params[name] = ParamStats(
            numel=v.size,
            norm_sq=float(v @ v),
            nonfinite=int((~np.isfinite(v)).sum()),
            dot_prev=None if p is None else float(v @ p),
            diff_sq=None if p is None else float((v - p) @ (v - p)),
        )
        shapes[name] = (v.size,) if not name.endswith("weight") else (1, v.size)
        dtypes[name] = "float32"
    meta = SnapshotMeta(
        path=f"ckpt{index}.pt",
        step=10 * index,
        epoch=float(index),
        order_source="embedded",
        optimizer="SGD",
        param_groups=tuple(groups),
    )
    return SnapshotStats(meta=meta, params=params, shapes=shapes, dtypes=dtypes)


def test_columns_norms_and_angles_from_stats():
    a0 = {"fc.weight": [3.0, 4.0], "fc.bias": [1.0, 0.0]}
    a1 = {"fc.weight": [4.0, 3.0], "fc.bias": [0.0, 2.0]}
    group = ParamGroup(
        params=("fc.weight", "fc.bias"), lr=0.1, weight_decay=5e-4, momentum=0.9
    )
    traj = build_trajectory(
        [_stats(0, a0, groups=[group]), _stats(1, a1, a0, groups=[group])]
    )
    t = traj.table
    assert list(t.columns) == list(COLUMNS)
    assert len(t) == 4
    w1 = t[(t.param == "fc.weight") & (t.snapshot == 1)].iloc[0]
    assert w1.norm == pytest.approx(5.0)
    assert w1.dot_prev == pytest.approx(24.0)
    assert w1.delta_norm == pytest.approx(math.sqrt(2.0))
    assert w1.angle_rad == pytest.approx(math.acos(24 / 25), rel=1e-12)
    assert w1.kind == "weight" and w1.layer == "fc"
    assert w1.lr == 0.1 and w1.weight_decay == 5e-4 and w1.momentum == 0.9
    b1 = t[(t.param == "fc.bias") & (t.snapshot == 1)].iloc[0]
    assert b1.angle_rad == pytest.approx(math.pi / 2)
    first = t[t.snapshot == 0]
    assert first["angle_rad"].isna().all() and first["dot_prev"].isna().all()


def test_angle_is_accurate_for_tiny_rotations():
    # arccos of a cosine rounded to 1e-16 cannot see 1e-9 rad; the chord form must.
    theta = 1e-9
    a = np.array([1.0, 0.0])
    b = np.array([math.cos(theta), math.sin(theta)])
    got = angle_between(1.0, 1.0, float(a @ b), float((a - b) @ (a - b)))
    assert got == pytest.approx(theta, rel=1e-6)


def test_appearing_and_vanishing_params_are_noted_not_fatal():
    s0 = _stats(0, {"a.weight": [1.0, 2.0]})
    s1 = _stats(
        1, {"a.weight": [1.0, 2.0], "b.weight": [1.0, 1.0]}, {"a.weight": [1.0, 2.0]}
    )
    s2 = _stats(2, {"b.weight": [1.0, 1.0]}, {"b.weight": [1.0, 1.0]})
    traj = build_trajectory([s0, s1, s2])
    assert any("appear" in w and "b.weight" in w for w in traj.warnings)
    assert any("vanish" in w and "a.weight" in w for w in traj.warnings)
    assert len(traj.table) == 4


@pytest.mark.parametrize(
    "name,shape,kind",
    [
        ("conv1.weight", (8, 3, 3, 3), "weight"),
        ("bn1.weight", (8,), "norm"),
        ("bn1.bias", (8,), "bias"),
        ("bn1.running_var", (8,), "buffer"),
        ("ln.weight", (32,), "norm"),
        ("pos_embedding", (1, 8, 32), "weight"),
        ("logit_scale", (), "other"),
    ],
)
def test_kind_of(name, shape, kind):
    assert kind_of(name, shape) == kind


def test_layer_of():
    assert layer_of("layer1.0.conv1.weight") == "layer1.0.conv1"
    assert layer_of("scale") == "scale"


def _rows_reference(stats):
    """The table as the row-by-row build made it (a dict per row), kept to check the column-wise
    build against: every value and dtype must come out the same."""
    import pandas as pd

    from normscope.trajectory import _group_of, with_column_types

    rows, prev_norms = [], {}
    for index, snap in enumerate(stats):
        groups = _group_of(snap.meta)
        norms_now = {}
        for param, ps in snap.params.items():
            shape = tuple(snap.shapes.get(param, ()))
            norm = math.sqrt(ps.norm_sq) if ps.norm_sq >= 0 else math.nan
            norms_now[param] = norm
            prev = prev_norms.get(param)
            if prev is not None and (ps.dot_prev is not None or ps.diff_sq is not None):
                angle = angle_between(prev, norm, ps.dot_prev, ps.diff_sq)
            else:
                angle = math.nan
            if ps.norm_sq_before is not None and ps.update_norm_sq is not None:
                update_angle = angle_between(math.sqrt(max(ps.norm_sq_before, 0.0)), norm, None,
                                             ps.update_norm_sq)  # fmt: skip
            else:
                update_angle = math.nan
            group = groups.get(param)
            betas = group.betas if group is not None and group.betas is not None else (None, None)

            def opt(x):
                return math.nan if x is None else float(x)

            def root(x):
                return math.nan if x is None else math.sqrt(x)

            rows.append({
                "snapshot": index, "step": snap.meta.step, "epoch": snap.meta.epoch,
                "path": snap.meta.path, "param": param, "layer": layer_of(param),
                "kind": kind_of(param, shape),
                "shape": "x".join(str(d) for d in shape) if shape else "",
                "numel": ps.numel, "dtype": snap.dtypes.get(param, ""), "norm": norm,
                "norm_sq": ps.norm_sq, "dot_prev": opt(ps.dot_prev),
                "delta_norm": root(ps.diff_sq), "angle_rad": angle,
                "nonfinite": ps.nonfinite, "buf_dot": opt(ps.buf_dot),
                "buf_norm": root(ps.buf_norm_sq), "exp_avg_sq_sum": opt(ps.exp_avg_sq_sum),
                "grad_norm": root(ps.grad_norm_sq), "grad_dot": opt(ps.grad_dot),
                "update_norm": root(ps.update_norm_sq), "update_angle_rad": update_angle,
                "optimizer": snap.meta.optimizer or "",
                "lr": opt(group.lr if group else None),
                "weight_decay": opt(group.weight_decay if group else None),
                "momentum": opt(group.momentum if group else None),
                "beta1": opt(betas[0]), "beta2": opt(betas[1]),
            })  # fmt: skip
        prev_norms = norms_now
    # the same schema types as the build: what is checked is the values and the types pandas
    # infers for the columns the schema leaves alone
    return with_column_types(pd.DataFrame(rows, columns=list(COLUMNS)))


def _sample_stats(path):
    from normscope.engine import compute_stats
    from normscope.sources import open_run

    run = open_run(str(path))
    return list(run.stats) if run.stats is not None else compute_stats(run.snapshots, device="cpu")


@pytest.mark.parametrize("run", ["digits_bn_cnn_sgd", "digits_ln_transformer_adamw",
                                 "digits_bn_cnn_lightning", "digits_bn_cnn_live"])  # fmt: skip
def test_column_wise_build_equals_the_row_wise_one_on_the_sample_runs(sample_runs_dir, run):
    import pandas as pd

    path = sample_runs_dir / run
    if run == "digits_bn_cnn_live":
        path = next(p for p in path.iterdir() if p.suffix == ".jsonl")
    stats = _sample_stats(path)
    pd.testing.assert_frame_equal(build_trajectory(stats).table, _rows_reference(stats))


def test_column_wise_build_equals_the_row_wise_one_on_odd_stats():
    import pandas as pd

    group = ParamGroup(params=("a",), lr=0.1, weight_decay=5e-4, momentum=0.9,
                       betas=(0.9, 0.99))  # fmt: skip
    first = _stats(0, {"a": [1.0, 2.0], "b.weight": [3.0, math.nan]}, groups=(group,))
    second = _stats(1, {"a": [1.5, 2.0], "c.bias": [1.0]}, prev={"a": [1.0, 2.0]})
    live = SnapshotStats(
        meta=SnapshotMeta(path="log", step=None, epoch=None, order_source="log"),
        params={"a": ParamStats(numel=2, norm_sq=-1.0, grad_norm_sq=4.0, grad_dot=0.5,
                                update_norm_sq=0.01, norm_sq_before=6.0, buf_dot=1.0,
                                buf_norm_sq=2.0, exp_avg_sq_sum=3.0)},
        shapes={},
        dtypes={},
    )
    for stats in ([first, second, live], [], [live]):
        pd.testing.assert_frame_equal(build_trajectory(stats).table, _rows_reference(stats))


def test_angles_of_arrays_are_angle_between_of_each_element():
    from normscope.trajectory import angles_between

    rng = np.random.default_rng(11)
    count = 4000
    a = rng.uniform(0.01, 10, count) * rng.choice([1e-6, 1.0, 1e6], count)
    b = a * (1 + rng.normal(0, rng.choice([1e-12, 1e-6, 1e-2, 1.0], count)))
    dot = a * b * np.cos(rng.uniform(0, np.pi, count))
    diff = rng.uniform(0, 1, count) * (a + b) ** 2
    specials = [0.0, -1.0, math.nan, math.inf, 1e-150]
    for values in (a, b, dot, diff):
        picked = rng.random(count) < 0.1
        values[picked] = rng.choice(specials, picked.sum())
    diff[rng.random(count) < 0.3] = math.nan  # the chord form unknown: the cosine form
    dot[rng.random(count) < 0.1] = 2 * a[:1] * b[:1]  # |cos| > 1 from rounding: clipped

    def one(x, y, d, s):
        return angle_between(x, y, None if math.isnan(d) else d, None if math.isnan(s) else s)

    with np.errstate(all="ignore"):
        expected = [one(*row) for row in zip(a.tolist(), b.tolist(), dot.tolist(), diff.tolist())]
        got = angles_between(a, b, dot, diff)
    assert np.array_equal(got, np.array(expected), equal_nan=True)
    assert np.isfinite(got).sum() > count // 2
