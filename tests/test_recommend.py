"""`recommend`: decay epochs, the LR schedule, relaxation spacing, past decays and the live verdict."""

import numpy as np
import pytest
from _bounce_tables import bounce_curve, noisy, trajectory_from_norms

from normscope.analysis.epochs import epoch_series
from normscope.analysis.recommend import (
    VERDICT_DECAY_NOW,
    VERDICT_NO_BOUNCE,
    VERDICT_NOT_YET,
    recommend,
    relaxation_time,
)
from normscope.errors import BadInputError


def _series(norms, **kw):
    return epoch_series(trajectory_from_norms({"conv": np.asarray(norms, dtype=float)}, **kw).table)


def test_relaxation_time_formulas():
    sgd = relaxation_time("SGD", 0.1, 5e-4, 0.9, float("nan"), 391)
    assert sgd.steps == pytest.approx(500.0) and sgd.epochs == pytest.approx(500 / 391)
    adamw = relaxation_time("AdamW", 1e-3, 0.1, float("nan"), 0.9, None)
    assert adamw.steps == pytest.approx(5000.0) and adamw.epochs is None
    assert relaxation_time("SGD", 0.1, 0.0, 0.9, float("nan"), 391) is None


def test_clean_bounce_gives_bounce_decay_plus_budget_decay():
    rec = recommend(_series(bounce_curve(), steps_per_epoch=1000))
    (bounce,) = rec.robust.bounces
    # epochs 0..59 are 59 completed epochs: the budget decay is at round(0.85·59) = 50
    assert rec.total_epochs == 59 and rec.decay_epochs == (bounce.decay_epoch, 50)
    assert rec.base_lr == pytest.approx(0.1) and rec.lr_source.startswith("largest LR")
    assert rec.schedule[bounce.decay_epoch - 1] == pytest.approx(0.1)
    assert rec.schedule[bounce.decay_epoch] == pytest.approx(0.01)
    assert rec.schedule[50] == pytest.approx(0.001) and len(rec.schedule) == 59
    assert rec.multistep == (f"torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[{bounce.decay_epoch}, 50],"
                             " gamma=0.1)")
    assert rec.verdict.status == VERDICT_DECAY_NOW  # the rise levelled off and the run never decayed


def test_no_bounce_says_so_plainly_and_advises_one_late_decay():
    rec = recommend(_series(noisy(40 * np.exp(0.004 * np.arange(50)), 0.01, seed=5)), lr=0.2)
    assert rec.robust.bounces == () and rec.decay_epochs == (42,)
    assert rec.lr_source == "--lr" and rec.schedule[41] == pytest.approx(0.2)
    assert "No weight-norm bounce" in rec.advice[0] and "single decay late in training" in rec.advice[0]
    assert rec.verdict.status == VERDICT_NO_BOUNCE


def test_noise_only_plateau_exact_rule_flagged_as_unreliable():
    rec = recommend(_series(noisy(np.full(60, 30.0), 0.02, seed=11)))
    assert rec.robust.bounces == () and len(rec.exact_decay_epochs) > 5
    assert any("fires on noise" in line for line in rec.advice)


def test_two_close_bounces_are_spaced_by_the_relaxation_time():
    first = bounce_curve(n=40, minimum=10, drop=0.3, rise=0.4, tau=3.0)
    second = bounce_curve(n=40, minimum=8, drop=0.3, rise=0.4, tau=3.0) * first[-1] / 100.0
    series = _series(np.concatenate([first, second]), steps_per_epoch=50)  # relaxes in 10 epochs at 0.1, 100 at 0.01
    rec = recommend(series)
    assert len(rec.robust.decay_epochs) == 2
    assert rec.decay_epochs == (rec.robust.decay_epochs[0],)
    reasons = [s.reason for s in rec.skipped]
    assert any("within the relaxation time" in r for r in reasons) and len(rec.skipped) == 2
    gaps = np.diff(rec.decay_epochs)
    assert all(g >= 100 for g in gaps)


def test_too_early_past_decay_is_flagged():
    lrs = np.array([0.1] * 10 + [0.01] * 2 + [0.001] * 28)
    rec = recommend(_series(noisy(np.full(40, 30.0), 0.001, seed=0), lrs=lrs, steps_per_epoch=1000))
    first, second = rec.past_decays
    assert (first.epoch, first.lr_before, first.lr_after) == (10, 0.1, 0.01)
    assert first.premature is False and first.relaxation_epochs == pytest.approx(0.5)
    assert second.epoch == 12 and second.epochs_since_previous == 2
    assert second.relaxation_epochs == pytest.approx(5.0) and second.premature is True


def test_verdict_not_yet_while_still_rising():
    rec = recommend(_series(bounce_curve(n=22, minimum=15, tau=30.0)), total_epochs=100)
    assert rec.verdict.status == VERDICT_NOT_YET and "still rising" in rec.verdict.evidence[-1]


def test_verdict_not_yet_while_falling():
    rec = recommend(_series(bounce_curve(n=12, minimum=15)), total_epochs=100)
    assert rec.verdict.status == VERDICT_NOT_YET and "falling" in rec.verdict.evidence[-1]


def test_verdict_decay_now_at_the_budget():
    rec = recommend(_series(noisy(np.full(90, 30.0), 0.001, seed=1)), total_epochs=100)
    assert rec.verdict.status == VERDICT_DECAY_NOW and "85 %" in rec.verdict.evidence[-1]


def test_verdict_waits_for_relaxation_after_a_recent_decay():
    lrs = np.array([0.1] * 30 + [0.01] * 3)
    rec = recommend(_series(bounce_curve(n=33), lrs=lrs, steps_per_epoch=100), total_epochs=100)
    assert rec.verdict.status == VERDICT_NOT_YET and "relax" in rec.verdict.evidence[-1]


def test_min_lr_stops_the_decays():
    first = bounce_curve(n=40, minimum=10, drop=0.3, rise=0.4, tau=3.0)
    series = _series(first, steps_per_epoch=100000)
    rec = recommend(series, decay_factor=0.5, min_lr=0.08)
    assert min(rec.schedule) == pytest.approx(0.08)
    assert any("--min-lr" in s.reason for s in rec.skipped)


def test_bad_learning_rates_are_clear_errors():
    with pytest.raises(BadInputError, match="zero"):
        recommend(_series(bounce_curve(), lrs=0.0))
    with pytest.raises(BadInputError, match="--lr"):
        recommend(_series(bounce_curve()), lr=0.0)
    with pytest.raises(BadInputError, match="decay-factor"):
        recommend(_series(bounce_curve()), decay_factor=1.5)
    with pytest.raises(BadInputError, match="no learning rate"):
        recommend(_series(bounce_curve(), lrs=np.nan))
    with pytest.raises(BadInputError, match="total-epochs"):
        recommend(_series(bounce_curve()), total_epochs=10)


def test_smooth_schedule_is_reported_as_such_not_as_many_decays():
    lrs = 0.1 * 0.5 * (1 + np.cos(np.pi * np.arange(30) / 30))
    rec = recommend(_series(noisy(np.full(30, 30.0), 0.001, seed=2), lrs=lrs))
    assert rec.past_decays == ()
    assert any("smooth schedule" in n for n in rec.notes)
    assert rec.base_lr == pytest.approx(0.1)


def test_budget_decay_already_done_is_not_asked_for_again():
    lrs = np.array([0.1] * 86 + [0.01] * 4)
    rec = recommend(_series(noisy(np.full(90, 30.0), 0.001, seed=1), lrs=lrs, steps_per_epoch=100000),
                    total_epochs=100)
    assert rec.past_decays[0].epoch == 86
    assert rec.verdict.status != VERDICT_DECAY_NOW
