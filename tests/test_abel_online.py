"""`normscope.ABEL`'s default rule: the robust bounce detector run online (causal, phase by phase,
waiting out relaxation times). The norm is driven through a real parameter and a real optimizer whose
steps the scheduler counts; the series come from `_ar_noise` (trend + correlated noise)."""

import math

import numpy as np
import pytest
import torch
from _ar_noise import norm_series, piecewise_bounce

from normscope.analysis.abel_online import phase_wait, robust_decay_due
from normscope.analysis.bounce import detect_bounces
from normscope.schedulers import ABEL

LR, WD, MOM, STEPS = 0.2, 1e-3, 0.9, 23
TAU = (1 - MOM) / (4 * LR * WD) / STEPS  # 5.43 epochs at lr 0.2


def _drive(norms, **kwargs):
    """Run ABEL over a given squared-norm series: the watched tensor is set to each epoch's norm."""
    w = torch.nn.Parameter(torch.ones(10, 10))
    opt = torch.optim.SGD([w], lr=LR, momentum=MOM, weight_decay=WD)

    def set_norm(value):
        with torch.no_grad():
            w.fill_(math.sqrt(value / w.numel()))

    set_norm(norms[0])
    sched = ABEL(opt, [w], decay_factor=0.1, total_epochs=len(norms) - 1, **kwargs)
    lrs = []
    for value in norms[1:]:
        for _ in range(STEPS):
            opt.step()  # no gradient: the weights stay, the scheduler counts the step
        set_norm(value)
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    return sched, lrs


def test_online_rule_decays_once_the_rise_ends_within_the_offline_interval():
    t = np.arange(61)
    decays, inside = [], 0
    for seed in range(6):
        norms = norm_series(piecewise_bounce(), TAU, 0.01, 0.003, seed)
        sched, _ = _drive(norms)
        offline = detect_bounces(t, norms, correlation_epochs=TAU).bounces[0]
        bounce_decays = [e for e in sched.decay_epochs if e != 51]
        assert len(bounce_decays) == 1 and 51 in sched.decay_epochs
        (epoch,) = bounce_decays
        lo, hi = offline.decay_interval
        inside += lo <= epoch <= hi + 1  # the full smoothing window lags the offline decay by an epoch
        assert epoch > 27 - 3 and epoch >= phase_wait(TAU)  # not before the rise ends, nor in the transient
        decays.append(epoch)
    assert sched.relaxation_epochs() == pytest.approx(TAU * 100, rel=1e-9)  # lr 0.002 after two decays
    # on a short prefix the bounce's own bend inflates the noise estimate: one seed confirms it late
    assert inside >= 5 and sorted(decays)[-2] <= 31


def test_online_rule_stays_quiet_on_trend_plus_correlated_noise():
    for seed in range(10):
        norms = norm_series(np.log(250.0) - 0.002 * np.arange(61), TAU, 0.04, 0.003, seed)
        sched, lrs = _drive(norms)
        assert sched.decay_epochs == [51], seed
        assert min(lrs[:50]) == LR  # lrs[i]: the LR after epoch i + 1


def test_online_rule_is_causal_and_the_exact_rule_is_kept():
    base = norm_series(piecewise_bounce(), TAU, 0.01, 0.003, 3)
    other = base.copy()
    other[30:] *= np.exp(np.linspace(0, -0.5, 31))  # a different future after epoch 29
    a, _ = _drive(base)
    b, _ = _drive(other)
    assert [e for e in a.decay_epochs if e < 30] == [e for e in b.decay_epochs if e < 30]
    for now in range(1, 30):
        assert robust_decay_due(base[: now + 1], [], tau_epochs=TAU) == robust_decay_due(
            other[: now + 1], [], tau_epochs=TAU)
    exact, _ = _drive(base, rule="exact")
    assert len(exact.decay_epochs) > 3  # the sign rule fires on the noise
    with pytest.raises(ValueError):
        _drive(base, rule="sometimes")


def test_robust_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    norms = norm_series(piecewise_bounce(), TAU, 0.01, 0.003, 1)
    full, _ = _drive(norms)
    w = torch.nn.Parameter(torch.ones(10, 10))
    opt = torch.optim.SGD([w], lr=LR, momentum=MOM, weight_decay=WD)
    with torch.no_grad():
        w.fill_(math.sqrt(norms[0] / 100))
    first = ABEL(opt, [w], decay_factor=0.1, total_epochs=60)
    for value in norms[1:21]:
        for _ in range(STEPS):
            opt.step()
        with torch.no_grad():
            w.fill_(math.sqrt(value / 100))
        first.step()
    torch.save({"sched": first.state_dict(), "opt": opt.state_dict()}, tmp_path / "s.pt")
    saved = torch.load(tmp_path / "s.pt", weights_only=True)
    opt2 = torch.optim.SGD([w], lr=LR, momentum=MOM, weight_decay=WD)
    opt2.load_state_dict(saved["opt"])
    resumed = ABEL(opt2, [w], decay_factor=0.1, total_epochs=60)
    resumed.load_state_dict(saved["sched"])
    assert resumed.optimizer_steps == 20 * STEPS and resumed.rule_name == "robust"
    for value in norms[21:]:
        for _ in range(STEPS):
            opt2.step()
        with torch.no_grad():
            w.fill_(math.sqrt(value / 100))
        resumed.step()
    assert resumed.decay_epochs == full.decay_epochs


def test_online_rule_on_the_real_seed_repeats_waits_for_the_budget():
    """Until its first decay an online run is its constant-LR pilot (same seed, same bits), so the
    rule's decisions on the pilots' prefixes are the ones it made in the retraining benchmark."""
    import json
    from pathlib import Path

    data = json.loads((Path(__file__).parent / "data" / "bn_cnn_constant_lr_norms.json").read_text())
    for norms in data["norm_sq"].values():
        assert not any(robust_decay_due(norms[: now + 1], [], tau_epochs=TAU) for now in range(1, 51))
