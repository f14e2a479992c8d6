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
