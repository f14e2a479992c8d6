"""The equilibrium formulas of docs/science.md §3, in one place, for floats and numpy arrays alike.

Every analysis that predicts an equilibrium (the equilibrium report, the live view, the
recommendation's spacing of decays) calls these, so the science cannot drift between them.

Families: "sgd" (SGD with momentum μ, coupled L2 decay), "adamw" (decoupled decay, β1).
Notation: η lr, λ weight decay, μ momentum / β1.
"""

from __future__ import annotations

import numpy as np

SGD = "sgd"
ADAMW = "adamw"


def optimizer_family(name: str) -> str:
    """"sgd", "adamw" (decoupled decay), "adam" (coupled L2) or "" from an optimizer's name."""
    low = (name or "").lower()
    if "adamw" in low:
        return ADAMW
    if "adam" in low:
        return "adam"
    if "sgd" in low:
        return SGD
    return ""


def effective_weight_decay(family: str, weight_decay, momentum):
    """λ_eff: momentum amplifies SGD's coupled decay by 1/(1−μ); AdamW's decay acts as given."""
    return weight_decay / (1 - momentum) if family == SGD else weight_decay


def angle_per_step(family: str, lr, weight_decay, momentum):
    """Angular update per step of a scale-invariant weight at equilibrium (radians).

    SGD+momentum √(2ηλ/(1+μ)); AdamW √(2ηλ(1−β1)/(1+β1)) (Wan et al. 2006.08419, Kosson et al.
    2305.17212).
    """
    if family == ADAMW:
        return np.sqrt(2 * lr * weight_decay * (1 - momentum) / (1 + momentum))
    return np.sqrt(2 * lr * weight_decay / (1 + momentum))


def grad_to_weight_ratio(lr, weight_decay, momentum):
    """SGD: η|g|/|w| at equilibrium, √(2ηλ(1−μ)) (Myrtle, "How to train your ResNet" part 6)."""
    return np.sqrt(2 * lr * weight_decay * (1 - momentum))


def relaxation_steps(family: str, lr, weight_decay, momentum):
    """Steps for the norm to relax to equilibrium after an LR change.

    From d|w|⁴/dt = −4ηλ|w|⁴ + 2η²|g̃|²: 1/(4ηλ) for plain SGD, (1−μ)/(4ηλ) with momentum;
    AdamW 1/(2ηλ).
    """
    with np.errstate(divide="ignore"):
        if family == SGD:
            return (1 - momentum) / (4 * lr * weight_decay)
        return 1 / (2 * lr * weight_decay)


def adamw_equilibrium_norm(lr, weight_decay, numel):
    """AdamW: the equilibrium norm of a scale-invariant row of `numel` elements, √(η·C/(2λ))."""
    return np.sqrt(lr * numel / (2 * weight_decay))


def correlation_epochs(optimizer: str, lr: float, weight_decay: float, momentum: float, beta1: float,
                       steps_per_epoch: float) -> float | None:
    """The relaxation time in epochs, which is also the correlation time of the norm's fluctuations
    (docs/science.md §4.5); None when there is no weight decay or a value is unknown."""
    import math

    values = (lr, weight_decay, steps_per_epoch)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values):
        return None
    family = optimizer_family(optimizer)
    if family in (ADAMW, "adam") or (not family and math.isfinite(beta1)):
        steps = relaxation_steps(ADAMW, lr, weight_decay, 0.0)
    else:
        steps = relaxation_steps(SGD, lr, weight_decay, momentum if math.isfinite(momentum) else 0.0)
    return float(steps) / steps_per_epoch
