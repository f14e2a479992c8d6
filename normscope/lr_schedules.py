"""Learning-rate schedules as numbers: step schedules, the MultiStepLR line, and Li & Arora's TEXP.

TEXP (Li & Arora 2019, arXiv 1910.07454): for scale-invariant weights, SGD with momentum γ, weight decay
λ and a step schedule η_t is the same function as SGD with momentum γ, *no* weight decay and the
tapered-exponential LR η̃_t given by the recursion (t counts optimizer steps; docs/science.md §2.3):

    r_t = η_t/η_{t−1};  a_t = 1 + γ·r_t − η_t·λ − γ·r_t/a_{t−1},  a_{−1} = α₀;
    c_0 = 1,  c_{t+1} = a_t·c_t;  η̃_t = η_t/(c_t·c_{t+1});  w_t = c_t·w̃_t,

α₀ the larger root of x² − (1 + γ − λη₀)·x + γ = 0. With a constant η this is η̃_t = η·α^(−2t−1).
Exactness needs the TEXP run's momentum buffer to start at b₀ = −(1−α₀)·w₀/(η₀·α₀)
(`texp_initial_buffer_factor`); from a zero buffer a ~1e-3 transient remains.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from normscope.errors import BadInputError


def step_schedule(
    base_lr: float, milestones: Sequence[int], gamma: float, total_epochs: int, min_lr: float = 0.0
) -> tuple[float, ...]:
    """LR of each epoch 0..total_epochs−1 under MultiStepLR (stepped once per epoch), floored at min_lr."""
    lrs = []
    for epoch in range(total_epochs):
        decays = sum(1 for m in milestones if m <= epoch)
        lrs.append(max(base_lr * gamma**decays, min(base_lr, min_lr)))
    return tuple(lrs)


def multistep_line(milestones: Sequence[int], gamma: float) -> str:
    """The line to paste into a training script."""
    return (
        "torch.optim.lr_scheduler.MultiStepLR(optimizer, "
        f"milestones={[int(m) for m in milestones]}, gamma={gamma:g})"
    )


def larger_root(lr: float, weight_decay: float, momentum: float) -> float:
    """α: the larger root of x² − (1 + γ − λη)·x + γ = 0 (the per-step norm shrink with momentum)."""
    b = 1.0 + momentum - weight_decay * lr
    disc = b * b - 4.0 * momentum
    if disc < 0 or b <= 0:
        raise BadInputError(
            f"lr·weight_decay = {lr * weight_decay:g} is too large for momentum {momentum:g}: no TEXP equivalent"
        )
    return (b + math.sqrt(disc)) / 2.0


def texp_initial_buffer_factor(lr: float, weight_decay: float, momentum: float) -> float:
    """b₀/w₀ for the TEXP run's momentum buffer that makes the equivalence exact from step 0."""
    alpha = larger_root(lr, weight_decay, momentum)
    return -(1.0 - alpha) / (lr * alpha)


def texp_log_lrs(step_lrs: Sequence[float], weight_decay: float, momentum: float) -> tuple[np.ndarray, np.ndarray]:
    """log η̃_t for every step, and log c_t (w_t = c_t·w̃_t), in log space so long runs do not overflow."""
    lrs = np.asarray(step_lrs, dtype=float)
    if lrs.size == 0 or np.any(~np.isfinite(lrs)) or np.any(lrs <= 0):
        raise BadInputError("TEXP needs a positive, finite learning rate at every step")
    if not (weight_decay >= 0 and 0 <= momentum < 1):
        raise BadInputError(f"TEXP needs weight_decay ≥ 0 and 0 ≤ momentum < 1 (got {weight_decay}, {momentum})")
    a_prev = larger_root(lrs[0], weight_decay, momentum)
    log_c = np.zeros(lrs.size + 1)
    prev_lr = lrs[0]
    for t, lr in enumerate(lrs):
        r = lr / prev_lr
        a = 1.0 + momentum * r - lr * weight_decay - momentum * r / a_prev
        if a <= 0:
            raise BadInputError(f"the TEXP recursion breaks down at step {t} (a_t = {a:g} ≤ 0)")
        log_c[t + 1] = log_c[t] + math.log(a)
        a_prev, prev_lr = a, lr
    log_texp = np.log(lrs) - log_c[:-1] - log_c[1:]
    return log_texp, log_c


@dataclass(frozen=True)
class TexpEpoch:
    epoch: int  # 0-based epoch of training
    step_lr: float  # the step schedule's LR (with weight decay)
    texp_lr: float  # TEXP LR at the epoch's first step (no weight decay); inf if it overflows
    growth: float  # TEXP LR at the next epoch's first step ÷ this one's


@dataclass(frozen=True)
class TexpSchedule:
    epochs: tuple[TexpEpoch, ...]
    steps_per_epoch: int
    weight_decay: float
    momentum: float
    initial_buffer_factor: float  # b₀ = factor·w₀ for an exact start


def texp_schedule(
    epoch_lrs: Sequence[float], steps_per_epoch: float, weight_decay: float, momentum: float
) -> TexpSchedule:
    """Per-epoch view of the TEXP equivalent of a per-epoch step schedule."""
    spe = round(steps_per_epoch)
    if spe < 1:
        raise BadInputError(f"TEXP needs steps per epoch ≥ 1, got {steps_per_epoch}")
    step_lrs = np.repeat(np.asarray(epoch_lrs, dtype=float), spe)
    log_texp, _ = texp_log_lrs(step_lrs, weight_decay, momentum)
    first = log_texp[::spe]
    # growth of the last epoch: from its first step to one step past its end, extrapolated at its own rate
    tail = log_texp[-1] + (log_texp[-1] - log_texp[-2]) if len(log_texp) > 1 else log_texp[-1]
    nxt = np.append(first[1:], tail)
    rows = tuple(
        TexpEpoch(e, float(epoch_lrs[e]), _exp(first[e]), _exp(nxt[e] - first[e])) for e in range(len(first))
    )
    return TexpSchedule(rows, spe, weight_decay, momentum,
                        texp_initial_buffer_factor(float(epoch_lrs[0]), weight_decay, momentum))


def _exp(x: float) -> float:
    return math.exp(x) if x < 709 else math.inf
