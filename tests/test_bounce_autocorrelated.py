"""The bounce detector's noise model includes the norm's autocorrelation: seed repeats of a real run
get the same advice, trend + correlated noise gives no bounce, and a real bounce is still found with
its decay interval covering the truth."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from _ar_noise import ar1, norm_series, piecewise_bounce

from normscope.analysis.bounce import detect_bounces, noise_level
from normscope.analysis.epochs import EpochSeries
from normscope.analysis.norm_noise import TAU_FITTED, estimate_noise
from normscope.analysis.recommend import recommend

DATA = json.loads((Path(__file__).parent / "data" / "bn_cnn_constant_lr_norms.json").read_text())


def _pilot(norms: list[float]) -> EpochSeries:
    cfg = DATA["config"]
    n, spe = len(norms), cfg["steps_per_epoch"]
    return EpochSeries(
        epochs=tuple(range(n)), norm_sq=tuple(norms), steps=tuple(e * spe for e in range(n)),
        lr=(math.nan,) + (cfg["lr"],) * (n - 1), snapshots=tuple(range(n)), include_kinds=("weight",),
        n_tensors=4, epoch_source="recorded epoch", steps_per_epoch=float(spe), optimizer="SGD",
        weight_decay=cfg["weight_decay"], momentum=cfg["momentum"], beta1=math.nan, layers=(),
    )


# ---------------------------------------------------------------------------- (a) real seed repeats
def test_seed_repeats_of_the_bn_cnn_get_the_same_advice_within_its_intervals():
    """Constant-LR BN-CNN digits runs at 8 seeds (benchmarks/bench_retraining.py wrote the norms)."""
    assert len(DATA["norm_sq"]) >= 5 and DATA["config"]["epochs"] == 60
    recs = {seed: recommend(_pilot(norms), total_epochs=60) for seed, norms in DATA["norm_sq"].items()}
    for seed, rec in recs.items():
        assert len(rec.decay_intervals) == len(rec.decay_epochs)
        for epoch, (lo, hi) in zip(rec.decay_epochs, rec.decay_intervals):
            assert lo <= epoch <= hi
        # the fluctuation is mostly the slow, mean-reverting kind: the white reading would miss it
        model = rec.robust.noise_model
        assert model.correlated > model.white and model.correlated > 2.5 * noise_level(np.log(rec.series.norm_sq))
    for a in recs.values():
        for b in recs.values():
            assert len(a.decay_epochs) == len(b.decay_epochs)
            assert all(lo <= e <= hi for e, (lo, hi) in zip(a.decay_epochs, b.decay_intervals))
    # the exact rule, on the same runs, decays on the wiggles: a different list for every seed
    exact = {rec.exact_decay_epochs for rec in recs.values()}
    assert len(exact) == len(recs) and min(len(e) for e in exact) >= 5


# --------------------------------------------------------------- (b) trend + correlated noise, no bounce
@pytest.mark.parametrize("tau", [2.0, 5.4, 10.0])
@pytest.mark.parametrize("trend", [-0.004, 0.0, 0.003])
def test_trend_plus_correlated_noise_reports_no_bounce(tau, trend):
    t = np.arange(61)
    false_alarms = 0
    for seed in range(100):
        series = norm_series(np.log(250.0) + trend * t, tau, 0.04, 0.003, seed)
        false_alarms += bool(detect_bounces(t, series, correlation_epochs=tau).bounces)
    assert false_alarms <= 4  # the detector's own false-alarm level is 1 % per run


def test_correlated_noise_without_a_given_tau_is_fitted_and_stays_quiet():
    t = np.arange(61)
    false_alarms = 0
    for seed in range(100):
        series = norm_series(np.log(250.0) - 0.002 * t, 5.4, 0.04, 0.003, seed)
        found = detect_bounces(t, series)
        assert found.noise_model.tau_source == TAU_FITTED
        false_alarms += bool(found.bounces)
    assert false_alarms <= 4


def test_noise_model_recovers_white_and_correlated_parts():
    rng = np.random.default_rng(5)
    y = ar1(4000, 5.0, 0.04, rng) + 0.01 * rng.standard_normal(4000) + 0.001 * np.arange(4000)
    given = estimate_noise(y, 5.0)
    assert given.correlated == pytest.approx(0.04, rel=0.15) and given.white == pytest.approx(0.01, rel=0.3)
    fitted = estimate_noise(y)
    assert fitted.correlated == pytest.approx(0.04, rel=0.25) and 2.5 < fitted.correlation_epochs < 10
    white = estimate_noise(0.02 * rng.standard_normal(4000), 5.0)
    assert white.white == pytest.approx(0.02, rel=0.1) and white.correlated < 0.005


# -------------------------------------------------------------------- (c) a real bounce is still found
@pytest.mark.parametrize("sigma", [0.01, 0.02])
def test_real_bounce_found_and_its_interval_covers_the_true_end_of_the_rise(sigma):
    t = np.arange(61)
    truth = 27 + 1  # the rise ends at epoch 27; the end is seen, and the LR decayed, one epoch later
    found = covered = 0
    widths = []
    for seed in range(40):
        detection = detect_bounces(t, norm_series(piecewise_bounce(), 5.4, sigma, 0.003, seed),
                                   correlation_epochs=5.4)
        near = [b for b in detection.bounces if 10 <= b.minimum_epoch <= 20 and b.decay_interval is not None]
        if near:
            b = near[0]
            found += 1
            covered += b.decay_interval[0] <= truth <= b.decay_interval[1]
            widths.append(b.decay_interval[1] - b.decay_interval[0])
            assert b.interval_confidence == 0.9 and b.confidence > 0.99 and 0 < b.reproducibility <= 1
    assert found >= 36 and covered >= 0.9 * found
    assert np.median(widths) <= 8  # an interval, not the whole run


@pytest.mark.parametrize("tau", [None, 5.43])
def test_a_short_run_s_noise_reading_does_not_move_with_the_last_digit(tau):
    # five epochs leave one lag of second differences: one equation for the white and the
    # correlated part, which every split fits exactly; the reading is white noise, whatever the
    # rounding (it flipped between white and correlated, 0.69 and 4.2 sigma, on 1e-16 changes)
    from normscope.analysis.norm_noise import estimate_noise_rows

    y = np.log([1.0, 1.031, 1.047, 1.052, 1.071])
    models = [estimate_noise(y * (1 + eps), tau) for eps in (0.0, 1e-16, -1e-16, 3e-16, -5e-15)]
    assert all(m.correlated == 0.0 for m in models)
    assert max(m.white for m in models) == pytest.approx(min(m.white for m in models), rel=1e-12)
    rows = estimate_noise_rows(np.stack([y * (1 + eps) for eps in (0.0, 1e-16, -5e-15)]), tau)
    assert [(m.white, m.correlated) for m in rows] == [
        (m.white, m.correlated) for m in (models[0], models[1], models[4])]
