"""Bounce detection on hand-built trajectories: the exact ABEL rule and the robust detector."""

import io
import math

import numpy as np
import pytest
from _bounce_tables import bounce_curve, noisy, trajectory_from_norms

from normscope.analysis.abel_rule import AbelState, abel_step, final_decay_epoch
from normscope.analysis.bounce import (
    RobustParams,
    abel_replay,
    analyze_bounces,
    detect_bounces,
    layer_bounces,
)
from normscope.analysis.epochs import epoch_series
from normscope.errors import BadInputError


# --------------------------------------------------------------------------------- exact ABEL rule
def test_abel_rule_sets_flag_on_first_sign_change_and_decays_on_second():
    norms = [10.0, 9.0, 8.0, 9.0, 10.0, 9.5, 9.0]  # Δ: −1 −1 +1 +1 −0.5 −0.5
    replay = abel_replay(range(len(norms)), norms)
    assert replay.minimum_epochs == (2,)  # flag set at epoch 3, the bottom was epoch 2
    assert replay.decay_epochs == (5,)  # the rise ended: Δ changed sign again at epoch 5
    assert replay.decays[0].reason == "bounce" and replay.decays[0].minimum_epoch == 2
    assert replay.reached_minimum is False


def test_abel_state_round_trips_and_zero_delta_is_no_sign_change():
    state = AbelState()
    for value in (5.0, 4.0, 4.0, 5.0):  # Δ −1, 0, +1: the products are 0, never < 0
        state, event = abel_step(state, value)
        assert event is None
    assert AbelState.from_dict(state.to_dict()) == state
    with pytest.raises(ValueError):
        abel_step(state, math.nan)


def test_budget_decay_at_85_percent():
    assert final_decay_epoch(100) == 85
    assert final_decay_epoch(10) == 8  # round(8.5) → 8 (banker's rounding); one decay either way
    replay = abel_replay(range(6), [5, 4, 3, 2, 1, 0.5], total_epochs=200)
    assert replay.decay_epochs == (170,) and replay.decays[0].reason == "budget"


def test_exact_rule_fires_on_noise_where_robust_detector_stays_quiet():
    epochs = np.arange(80)
    plateau = noisy(np.full(80, 50.0), 0.01, seed=3)
    assert len(abel_replay(epochs, plateau).decay_epochs) >= 10
    assert detect_bounces(epochs, plateau).bounces == ()


# ---------------------------------------------------------------------------------- robust detector
@pytest.mark.parametrize("sigma", [0.0, 0.002, 0.01])
def test_clean_bounce_found_with_its_minimum_depth_and_decay(sigma):
    n = bounce_curve()
    found = detect_bounces(np.arange(60), noisy(n, sigma, seed=1))
    assert len(found.bounces) == 1
    b = found.bounces[0]
    assert abs(b.minimum_epoch - 15) <= 1
    assert 0.28 < b.depth < 0.37  # smoothed: a little shallower than the true 35 % V
    assert 0.25 < b.rise < 0.5
    assert b.decay_epoch is not None and 18 <= b.decay_epoch <= 35  # where the rise levels off
    assert b.confidence > 0.99


@pytest.mark.parametrize("sigma", [0.001, 0.005, 0.02, 0.05])
@pytest.mark.parametrize("trend", [-0.01, -0.001, 0.0, 0.002, 0.01])
def test_no_bounce_on_monotone_trend_plus_noise(sigma, trend):
    t = np.arange(80)
    for seed in range(15):
        series = noisy(40.0 * np.exp(trend * t), sigma, seed=seed)
        found = detect_bounces(t, series)
        assert found.bounces == (), (sigma, trend, seed, found.bounces)


def test_noise_only_estimates_its_own_level():
    t = np.arange(200)
    found = detect_bounces(t, noisy(np.full(200, 10.0), 0.02, seed=7))
    assert found.bounces == ()
    assert found.noise == pytest.approx(0.02, rel=0.2)
    # the threshold is the noise's own 1 % false-alarm rise over 200 epochs, never below 5 σ of its white part
    assert found.noise_limited and found.threshold >= 5 * found.noise_model.white
    assert found.threshold == pytest.approx(5 * found.noise, rel=0.3)


def test_two_bounces():
    first = bounce_curve(n=50, minimum=10, drop=0.3, rise=0.4, tau=4.0)
    second = bounce_curve(n=50, minimum=12, drop=0.3, rise=0.4, tau=4.0) * first[-1] / 100.0
    series = noisy(np.concatenate([first, second]), 0.003, seed=2)
    found = detect_bounces(np.arange(100), series)
    assert [b.minimum_epoch for b in found.bounces] == [10, 62]
    assert all(b.decay_epoch is not None for b in found.bounces)


def test_rise_still_going_has_no_decay_yet():
    n = bounce_curve(n=22, minimum=15, tau=30.0)  # rising almost linearly at the end
    b = detect_bounces(np.arange(22), n).bounces[0]
    assert b.minimum_epoch == 15 and b.decay_epoch is None and b.rise_end_epoch is None


def test_params_are_validated():
    with pytest.raises(BadInputError):
        RobustParams(smooth_window=0)
    with pytest.raises(BadInputError):
        detect_bounces([0, 1, 2], [1.0, 0.0, 1.0])


# ---------------------------------------------------------------------------------- epoch series
def test_epoch_series_default_is_weights_only_and_reports_it():
    traj = trajectory_from_norms({"conv1": bounce_curve(), "conv2": np.full(60, 7.0)})
    s = epoch_series(traj.table)
    assert s.include_kinds == ("weight",) and s.n_tensors == 2
    assert s.epochs == tuple(range(60)) and s.epoch_source == "recorded epoch"
    assert s.norm_sq[0] == pytest.approx(107.0)
    assert s.steps_per_epoch == pytest.approx(100)
    assert [layer.layer for layer in s.layers] == ["conv1", "conv2"]
    with_bias = epoch_series(traj.table, include_kinds="weight,bias")
    assert with_bias.norm_sq[0] == pytest.approx(107.0 + 2 * 0.25)
    assert epoch_series(traj.table, include_kinds="all").n_tensors == 4


def test_snapshots_without_an_epoch_among_others_are_counted_and_located():
    """A tracker whose first record came before set_epoch(), a checkpoint saved without its epoch:
    the error says how many of how many lack one, and at which steps."""
    traj = trajectory_from_norms({"fc": bounce_curve(12)}, steps_per_epoch=10)
    table = traj.table.copy()
    table.loc[table["snapshot"].isin([0, 5]), "epoch"] = np.nan
    with pytest.raises(BadInputError, match=r"^2 of 12 snapshot\(s\) record no epoch \(at step 0, 50\); "
                                            r"pass --steps-per-epoch N$"):
        epoch_series(table)


def test_steps_per_epoch_aggregates_per_step_snapshots():
    # 4 snapshots per epoch (25 steps apart), no epoch recorded: the last of each epoch stands for it
    values = np.repeat(np.arange(10, 0, -1, dtype=float), 4)
    traj = trajectory_from_norms({"fc": values}, steps_per_epoch=25, record_epoch=False)
    with pytest.raises(BadInputError, match="--steps-per-epoch"):
        epoch_series(traj.table)
    s = epoch_series(traj.table, steps_per_epoch=100)
    assert s.epoch_source == "steps_per_epoch=100"
    # steps 0 | 25..100 | 125..200 | ... | 925..975: the last of each bucket stands for the epoch
    assert s.epochs == tuple(range(11)) and s.notes == ()
    assert s.norm_sq[1] == pytest.approx(9.0)  # step 100 is the 5th snapshot: values[4]
    assert s.norm_sq[10] == pytest.approx(1.0)  # step 975, epoch 9.75: within half an epoch of the end
    # 160 steps per epoch: the newest snapshot (step 975) is only 0.09 into epoch 7 → dropped, said so
    s160 = epoch_series(traj.table, steps_per_epoch=160)
    assert s160.epochs[-1] == 6 and any("epoch 7 is incomplete" in note for note in s160.notes)
    assert s160.norm_sq[6] == pytest.approx(values[960 // 25])


def test_bad_input_is_one_clear_error():
    short = trajectory_from_norms({"fc": np.array([3.0, 2.0])})
    with pytest.raises(BadInputError, match="at least 3"):
        epoch_series(short.table)
    nan = trajectory_from_norms({"fc": np.array([3.0, math.nan, 2.0, 1.0])})
    with pytest.raises(BadInputError, match="non-finite"):
        epoch_series(nan.table)
    with pytest.raises(BadInputError, match="unknown tensor kind"):
        epoch_series(short.table, include_kinds="weights")


def test_per_layer_bounces_say_which_layer_bounces():
    traj = trajectory_from_norms({"conv1": bounce_curve(), "conv2": noisy(np.full(60, 7.0), 0.01, seed=4)})
    layers = {lb.layer: lb for lb in layer_bounces(epoch_series(traj.table))}
    assert len(layers["conv1"].robust.bounces) == 1
    assert layers["conv2"].robust.bounces == ()


def test_analyze_bounces_needs_no_learning_rate_and_renders():
    from rich.console import Console

    from normscope.report.machine.recommend_json import bounce_analysis_json
    from normscope.report.terminal.recommend_view import bounce_analysis_view

    traj = trajectory_from_norms({"conv1": bounce_curve(), "conv2": np.full(60, 7.0)}, lrs=np.nan)
    found = analyze_bounces(traj.table)
    assert [b.minimum_epoch for b in found.robust.bounces] == [15]
    doc = bounce_analysis_json(found)
    assert doc["robust_decay_epochs"] == list(found.robust.decay_epochs) and doc["schema_version"] == 1
    console = Console(width=140, record=True, file=io.StringIO())
    console.print(bounce_analysis_view(found))
    text = console.export_text()
    assert "Weight-norm bounces" in text and "conv1" in text
