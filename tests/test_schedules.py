"""Step schedules, the MultiStepLR line, and Li & Arora's TEXP equivalence checked by real training."""

import importlib
import math
import sys

import numpy as np
import pytest
import torch
from _digits import digits_tensors

from normscope.errors import BadInputError
from normscope.lr_schedules import (
    larger_root,
    multistep_line,
    step_schedule,
    texp_initial_buffer_factor,
    texp_log_lrs,
    texp_schedule,
)


def test_step_schedule_matches_torch_multisteplr():
    milestones, gamma = [3, 7], 0.1
    ours = step_schedule(0.5, milestones, gamma, total_epochs=10)
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.5)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=gamma)
    theirs = []
    for _ in range(10):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert ours == pytest.approx(theirs, rel=1e-12)
    assert step_schedule(0.5, milestones, gamma, 10, min_lr=0.01)[-1] == pytest.approx(0.01)
    assert multistep_line(milestones, gamma) == \
        "torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[3, 7], gamma=0.1)"


def test_the_former_module_name_still_imports_and_says_where_to_go():
    sys.modules.pop("normscope.schedules", None)
    with pytest.warns(DeprecationWarning, match="normscope.lr_schedules"):
        former = importlib.import_module("normscope.schedules")
    assert (former.step_schedule, former.multistep_line, former.texp_schedule) == \
        (step_schedule, multistep_line, texp_schedule)


def test_texp_growth_per_epoch_is_the_papers_1_481():
    sched = texp_schedule([0.1] * 3, steps_per_epoch=391, weight_decay=5e-4, momentum=0.9)
    assert [round(e.growth, 3) for e in sched.epochs] == [1.481, 1.481, 1.481]
    alpha = larger_root(0.1, 5e-4, 0.9)
    assert alpha == pytest.approx(1 - 0.1 * 5e-4 / 0.1, rel=1e-5)  # the first-order estimate
    # constant LR: η̃_t = η·α^(−2t−1) exactly
    log_lr, _ = texp_log_lrs([0.1] * 50, 5e-4, 0.9)
    assert np.exp(log_lr) == pytest.approx(0.1 * alpha ** (-2.0 * np.arange(50) - 1), rel=1e-12)


def test_texp_rejects_impossible_settings():
    with pytest.raises(BadInputError):
        texp_schedule([0.0, 0.1], 10, 5e-4, 0.9)
    with pytest.raises(BadInputError):
        larger_root(10.0, 1.0, 0.9)  # λη so large the quadratic has no real root


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add contention on a shared CPU
    yield
    torch.set_num_threads(threads)


def _train(x, y, w0, readout, lrs, weight_decay, momentum, initial_buffer=None):
    """Full-batch SGD on a scale-invariant weight: linear (no bias) → BatchNorm (no affine) → readout."""
    w = torch.nn.Parameter(w0.clone())
    opt = torch.optim.SGD([w], lr=float(lrs[0]), momentum=momentum, weight_decay=weight_decay)
    if initial_buffer is not None:
        opt.state[w]["momentum_buffer"] = initial_buffer.clone()
    trail = []
    for lr in lrs:
        opt.param_groups[0]["lr"] = float(lr)
        opt.zero_grad()
        z = x @ w.T
        h = (z - z.mean(0)) / z.std(0, correction=0)  # BatchNorm without eps (eps breaks invariance)
        torch.nn.functional.cross_entropy(torch.relu(h) @ readout, y).backward()
        opt.step()
        trail.append(w.detach().clone())
    return trail


def test_step_schedule_with_wd_equals_texp_without_wd_on_a_scale_invariant_model(one_thread):
    images, labels = digits_tensors()
    x, y = images.flatten(1)[:256].double(), labels[:256]
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(32, 64, generator=gen, dtype=torch.float64) * 0.3
    readout = torch.randn(32, 10, generator=gen, dtype=torch.float64) * 0.3
    wd, mom, spe = 5e-3, 0.9, 20
    epoch_lrs = [0.5, 0.5, 0.05, 0.05, 0.005]  # two decays
    step_lrs = np.repeat(epoch_lrs, spe)
    log_texp, log_c = texp_log_lrs(step_lrs, wd, mom)

    with_wd = _train(x, y, w0, readout, step_lrs, wd, mom)
    b0 = texp_initial_buffer_factor(epoch_lrs[0], wd, mom) * w0
    texp = _train(x, y, w0, readout, np.exp(log_texp), 0.0, mom, initial_buffer=b0)

    worst = 0.0
    for t, (a, b) in enumerate(zip(with_wd, texp)):
        # w_{t+1} = c_{t+1}·w̃_{t+1}: same direction, the scale carried by c
        worst = max(worst, float((a / a.norm() - b / b.norm()).abs().max()))
        assert a == pytest.approx((math.exp(log_c[t + 1]) * b).numpy(), rel=1e-9, abs=1e-12)
    assert worst < 1e-10
    assert float(with_wd[-1].norm() / texp[-1].norm()) < 0.5  # the two runs' norms differ a lot

    # without the special initial buffer a transient remains — the reason the factor exists
    plain = _train(x, y, w0, readout, np.exp(log_texp), 0.0, mom)
    gap = max(float((a / a.norm() - b / b.norm()).abs().max()) for a, b in zip(with_wd, plain))
    assert gap > 1e-6
