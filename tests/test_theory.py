"""The equilibrium formulas against the figures of docs/science.md §3, checked by hand or by simulation."""

import math

import numpy as np
import pytest

from normscope.analysis import theory


def test_myrtle_grad_ratio_matches_the_measured_run_settings():
    # docs/science.md §3: η 0.2, λ 1e-3, μ 0.9 predicts η|g|/|w| = 0.00632
    assert theory.grad_to_weight_ratio(0.2, 1e-3, 0.9) == pytest.approx(0.00632, rel=1e-3)


def test_angle_per_step_sgd_and_adamw():
    assert theory.angle_per_step("sgd", 0.1, 5e-4, 0.9) == pytest.approx(math.sqrt(2 * 0.1 * 5e-4 / 1.9))
    assert theory.angle_per_step("adamw", 1e-3, 0.1, 0.9) == pytest.approx(math.sqrt(2e-4 * 0.1 / 1.9))


def test_relaxation_times():
    # 1/(4·lr·wd/(1−μ)) for SGD+momentum, 1/(2·lr·wd) for AdamW
    assert theory.relaxation_steps("sgd", 0.2, 1e-3, 0.9) == pytest.approx(125.0)
    assert theory.relaxation_steps("adamw", 3e-3, 0.1, 0.9) == pytest.approx(1 / (2 * 3e-4))


def test_sgd_angle_matches_a_simulated_scale_invariant_walk():
    # Pure noise orthogonal to w, SGD with momentum and coupled weight decay: the per-step angle
    # settles at √(2ηλ/(1+μ)).
    rng = np.random.default_rng(0)
    eta, lam, mu, dim = 0.1, 5e-3, 0.9, 4000
    w = rng.normal(size=dim)
    buf = np.zeros(dim)
    angles = []
    for step in range(6000):
        g = rng.normal(size=dim) / np.linalg.norm(w)
        g -= (g @ w) / (w @ w) * w  # scale invariance: the gradient is orthogonal to w
        buf = mu * buf + g + lam * w
        new = w - eta * buf
        if step > 4000:
            angles.append(math.acos(np.clip(new @ w / (np.linalg.norm(new) * np.linalg.norm(w)), -1, 1)))
        w = new
    assert np.mean(angles) == pytest.approx(theory.angle_per_step("sgd", eta, lam, mu), rel=0.05)


@pytest.mark.parametrize("name,family", [("SGD", "sgd"), ("AdamW", "adamw"), ("Adam", "adam"), ("Lion", "")])
def test_optimizer_family(name, family):
    assert theory.optimizer_family(name) == family
