"""Equilibrium: the effective-step formula, synthetic invariant weights, the sample SGD run, statuses."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from _sample_tables import SGD_RUN, sample_trajectory
from scipy.signal import lfilter

from normscope.analysis.equilibrium import (
    TOLERANCE,
    HyperparamOverrides,
    LayerEquilibrium,
    NotApplicable,
    effective_steps,
    equilibrium_for,
    equilibrium_report,
    layer_equilibrium,
)
from normscope.analysis.invariance import classify_invariance
from normscope.snapshot import ParamGroup, ParamStats, SnapshotMeta, SnapshotStats
from normscope.trajectory import build_trajectory


def test_effective_steps_limits():
    mu = np.array([0.9])
    assert effective_steps(np.array([1.0]), mu)[0] == pytest.approx(0.1 / 1.9)  # S(1) = (1−μ)/(1+μ)
    assert effective_steps(np.array([7.0]), np.array([0.0]))[0] == pytest.approx(7.0)
    assert effective_steps(np.array([1000.0]), mu)[0] == pytest.approx(1000 - 2 * 0.9 / (1 - 0.81), rel=1e-9)


def test_effective_steps_match_a_simulated_momentum_walk():
    """Var of a k-step displacement of a heavy-ball walk driven by white noise, in units of (1/(1−μ))²."""
    rng = np.random.default_rng(0)
    mu, k = 0.9, 23
    velocity = lfilter([1.0], [1.0, -mu], rng.standard_normal((64, 20000)), axis=1)
    position = np.cumsum(velocity * (1 - mu), axis=1)[:, 1000:]
    measured = np.var(position[:, k:] - position[:, :-k])
    assert measured == pytest.approx(effective_steps(np.array([float(k)]), np.array([mu]))[0], rel=0.03)


def _simulate_invariant_weight(optimizer: str, *, steps=3000, every=25, dim=2000, lr=0.1, wd=0.01, beta=0.9, seed=0):
    """A weight receiving only noise orthogonal to itself (exactly what invariance + noise means), saved
    every `every` steps through the real trajectory builder."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(dim) * 0.2
    buf, sq = np.zeros(dim), np.zeros(dim)
    stats, prev = [], None
    for t in range(steps + 1):
        if t % every == 0:
            group = ParamGroup(params=("w",), lr=lr, weight_decay=wd,
                               momentum=beta if optimizer == "SGD" else None,
                               betas=(beta, 0.999) if optimizer == "AdamW" else None)
            stats.append(SnapshotStats(
                meta=SnapshotMeta(path=f"s{t}", step=t, epoch=None, order_source="embedded", optimizer=optimizer,
                                  param_groups=(group,)),
                params={"w": ParamStats(numel=dim, norm_sq=float(w @ w),
                                        dot_prev=None if prev is None else float(w @ prev),
                                        diff_sq=None if prev is None else float((w - prev) @ (w - prev)),
                                        buf_dot=float(w @ buf), buf_norm_sq=float(buf @ buf))},
                shapes={"w": (dim,)}, dtypes={"w": "float64"}))
            prev = w.copy()
        g = rng.standard_normal(dim) / math.sqrt(dim)
        g -= (g @ w) / (w @ w) * w  # ⟨g, w⟩ = 0
        g *= 1.0 / np.linalg.norm(w)  # ∇L(c·w) = ∇L(w)/c
        if optimizer == "SGD":
            buf = beta * buf + g + wd * w
            w = w - lr * buf
        else:
            buf = beta * buf + (1 - beta) * g
            sq = 0.999 * sq + 0.001 * g * g
            w = w * (1 - lr * wd) - lr * (buf / (1 - beta ** (t + 1))) / (np.sqrt(sq / (1 - 0.999 ** (t + 1))) + 1e-12)
    return build_trajectory(stats)


@pytest.mark.parametrize("optimizer", ["SGD", "AdamW"])
def test_synthetic_invariant_weight_sits_on_the_prediction(optimizer):
    # relaxation times: SGD (1−μ)/(4ηλ) = 25 steps, AdamW 1/(2ηλ) = 500 steps; 3000 steps simulated
    lr, wd = (0.1, 0.01) if optimizer == "SGD" else (0.01, 0.1)
    traj = _simulate_invariant_weight(optimizer, lr=lr, wd=wd)
    result = layer_equilibrium(traj.table)
    assert isinstance(result, LayerEquilibrium)
    assert result.status == "at equilibrium", result.reason
    # pure noise, exactly orthogonal: the theory's assumptions hold, so the ratio is 1 to sampling error
    assert result.settled_ratio == pytest.approx(1.0, abs=0.06)
    if optimizer == "SGD":
        assert result.settled_grad_ratio == pytest.approx(1.0, abs=0.06)
    else:
        last = result.points[-1]
        assert last.norm / last.predicted_norm == pytest.approx(1.0, abs=0.1)


def test_sample_sgd_run_conv_layers():
    """The number docs/equilibrium.md quotes. Expected bands, from the theory's assumptions (docs/equilibrium.md):
    η|g|/|w| vs √(2ηλ(1−μ)): the balance of decay against noise growth, which needs only ⟨g,w⟩ = 0
    and a settled norm; |g| is estimated from one momentum buffer per epoch (±20% per sample), so the
    median of ~29 settled epochs is within ±10% of 1. The angle ratio additionally assumes successive
    gradients are uncorrelated; mean-reverting noise can only slow the walk, so it lies below 1 + the
    same 10%, and above TOLERANCE[0] for a layer the report may call settled."""
    traj = sample_trajectory(SGD_RUN)
    report = equilibrium_for(traj, classify_invariance(traj.table))
    layers = {layer.param: layer for layer in report.layers}
    assert set(layers) == {"block1.conv.weight", "block2.conv.weight", "block3.conv.weight"}
    for layer in layers.values():
        assert layer.settled_grad_ratio == pytest.approx(1.0, abs=0.1), layer.param
        assert TOLERANCE[0] <= layer.settled_ratio <= 1.1, layer.param
        # the LR fell ×10 at epoch 45: 345 of the new 1250-step relaxation time have passed
        assert layer.status == "approaching"
        assert layer.relaxation_steps == pytest.approx(0.1 / (4 * 0.02 * 1e-3))
        assert layer.relaxations_since_lr_change == pytest.approx(345 / 1250, rel=0.01)
    skipped = {item.param: item.reason for item in report.not_applicable}
    assert "head.weight" in skipped and "theory does not apply" in skipped["head.weight"]
    sources = {h.name: h.source for h in report.hyperparams}
    assert sources["lr"] != "missing" and sources["weight_decay"] != "missing"


def _table(lr=0.1, wd=1e-3, optimizer="SGD", steps=(0, 10, 20), angle=0.05):
    return pd.DataFrame({
        "snapshot": range(len(steps)), "step": pd.array(steps, dtype="Int64"), "epoch": np.nan,
        "param": "w", "layer": "w", "kind": "weight", "numel": 100, "norm": 1.0,
        "angle_rad": [np.nan] + [angle] * (len(steps) - 1), "dot_prev": np.nan,
        "buf_dot": np.nan, "buf_norm": np.nan, "grad_norm": np.nan, "grad_dot": np.nan,
        "optimizer": optimizer, "lr": lr, "weight_decay": wd, "momentum": 0.9, "beta1": 0.9,
    })


def test_no_weight_decay_means_no_equilibrium():
    result = layer_equilibrium(_table(wd=0.0))
    assert result.status == "off" and "no weight decay" in result.reason


def test_theory_does_not_apply_to_coupled_adam_or_unknown_optimizers():
    assert isinstance(layer_equilibrium(_table(optimizer="Adam")), NotApplicable)
    unknown = layer_equilibrium(_table(optimizer=""))
    assert isinstance(unknown, NotApplicable) and "optimizer unknown" in unknown.reason
    # …unless the user names it
    assert isinstance(layer_equilibrium(_table(optimizer=""), HyperparamOverrides(optimizer="SGD")), LayerEquilibrium)


def test_overrides_replace_the_table_and_are_reported():
    table = _table(lr=math.nan, wd=math.nan)
    from normscope.analysis.invariance import InvarianceVerdict

    verdict = InvarianceVerdict("w", "w", "weight", "invariant", "guess", "test", ())
    report = equilibrium_report(table, [verdict], overrides=HyperparamOverrides(lr=0.1, weight_decay=1e-3))
    sources = {h.name: (h.value, h.source) for h in report.hyperparams}
    assert sources["lr"] == ("0.1", "override") and sources["weight_decay"] == ("0.001", "override")
    assert sources["momentum"][1] != "override"
    assert math.isfinite(report.layers[0].ratio)


def test_steps_from_epochs_when_steps_are_missing():
    table = _table().assign(step=pd.array([None] * 3, dtype="Int64"), epoch=[0.0, 1.0, 2.0])
    assert isinstance(layer_equilibrium(table), NotApplicable)
    result = layer_equilibrium(table, HyperparamOverrides(steps_per_epoch=10))
    assert [p.steps for p in result.points] == [10.0, 10.0]


def test_lr_at_start_or_end():
    table = _table().assign(lr=[0.1, 0.01, 0.01])
    start = layer_equilibrium(table)
    end = layer_equilibrium(table, HyperparamOverrides(lr_at="end"))
    assert [p.lr for p in start.points] == [0.1, 0.01]
    assert [p.lr for p in end.points] == [0.01, 0.01]
    assert start.status == "approaching" and "τ since the LR changed" in start.reason


def test_saturated_angles_are_not_judged():
    # 10,000 steps at ηλ_eff = 0.01: the directions have decorrelated completely
    result = layer_equilibrium(_table(steps=(0, 10000, 20000), wd=0.01, angle=1.5))
    assert result.status == "unknown" and "saturated" in result.reason


def test_lr_phases_match_their_definition():
    """The bisection-on-stacks phase finder equals the definition: the phase of interval i starts after
    the last interval whose LR is more than 25% away from η_i."""
    from normscope.analysis.equilibrium import _phase_starts

    def by_definition(eta):
        out = np.zeros(len(eta), dtype=int)
        for i in range(1, len(eta)):
            j = i
            while j - 1 >= 1 and max(eta[j - 1], eta[i]) / min(eta[j - 1], eta[i]) <= 1.25:
                j -= 1
            out[i] = j
        return out

    rng = np.random.default_rng(1)
    for _ in range(500):
        n = int(rng.integers(2, 40))
        steps = rng.normal(0, 0.3, n - 1) * rng.choice([0.0, 1.0])  # constant, or a random walk in log-LR
        eta = np.concatenate([[math.nan], np.exp(np.cumsum(steps))])
        assert (_phase_starts(eta)[1:] == by_definition(eta)[1:]).all(), eta
    step_decay = np.array([math.nan, 0.2, 0.2, 0.2, 0.02, 0.02])
    assert list(_phase_starts(step_decay)[1:]) == [1, 1, 1, 4, 4]
