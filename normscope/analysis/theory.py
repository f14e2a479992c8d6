"""The equilibrium formulas of docs/science.md §3, in one place, for floats and numpy arrays alike.

Every analysis that predicts an equilibrium (the equilibrium report, the live view, the
recommendation's spacing of decays) calls these, so the science cannot drift between them.

Families: "sgd" (SGD with momentum μ, coupled L2 decay), "adamw" (decoupled decay, β1).
Notation: η lr, λ weight decay, μ momentum / β1.
"""

from __future__ import annotations

import math

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
    """λ_eff: momentum amplifies SGD's coupled decay by 1/(1−μ); AdamW's decay acts as given.

    Args:
        family: "sgd" or "adamw" (`optimizer_family`).
        weight_decay: λ; a float or an array.
        momentum: μ (SGD); ignored for AdamW.

    Returns:
        λ_eff, of the inputs' type.

    >>> round(effective_weight_decay("sgd", 1e-3, 0.9), 6)
    0.01
    >>> effective_weight_decay("adamw", 0.1, 0.9)
    0.1
    """
    return weight_decay / (1 - momentum) if family == SGD else weight_decay


def angle_per_step(family: str, lr, weight_decay, momentum):
    """Angular update per step of a scale-invariant weight at equilibrium (radians).

    SGD+momentum √(2ηλ/(1+μ)); AdamW √(2ηλ(1−β1)/(1+β1)) (Wan et al. 2006.08419, Kosson et al.
    2305.17212; docs/science.md §3.3).

    Args:
        family: "sgd" or "adamw".
        lr: η; weight_decay: λ; momentum: μ, or β1 for AdamW. Floats or arrays.

    Returns:
        Radians per step, of the inputs' type.

    >>> float(angle_per_step("sgd", 0.2, 1e-3, 0.9))  # the BN-CNN sample run: 0.83° per step
    0.014509525002200234
    """
    if family == ADAMW:
        return np.sqrt(2 * lr * weight_decay * (1 - momentum) / (1 + momentum))
    return np.sqrt(2 * lr * weight_decay / (1 + momentum))


def grad_to_weight_ratio(lr, weight_decay, momentum):
    """SGD: η|g|/|w| at equilibrium, √(2ηλ(1−μ)) (Myrtle, "How to train your ResNet" part 6).

    Args:
        lr: η; weight_decay: λ; momentum: μ. Floats or arrays.

    Returns:
        The ratio of a step's gradient term to the weight, of the inputs' type.

    >>> round(float(grad_to_weight_ratio(0.2, 1e-3, 0.9)), 6)
    0.006325
    """
    return np.sqrt(2 * lr * weight_decay * (1 - momentum))


def relaxation_steps(family: str, lr, weight_decay, momentum):
    """Steps for the norm to relax to equilibrium after an LR change (docs/science.md §3.5).

    From d|w|⁴/dt = −4ηλ|w|⁴ + 2η²|g̃|²: 1/(4ηλ) for plain SGD, (1−μ)/(4ηλ) with momentum;
    AdamW 1/(2ηλ).

    Args:
        family: "sgd" or "adamw".
        lr: η; weight_decay: λ; momentum: μ (ignored for AdamW). Floats or arrays.

    Returns:
        Steps, of the inputs' type; inf where ηλ is 0.

    >>> round(float(relaxation_steps("sgd", 0.2, 1e-3, 0.9)))
    125
    >>> round(float(relaxation_steps("adamw", 3e-3, 0.1, 0.9)))
    1667
    """
    with np.errstate(divide="ignore"):
        if family == SGD:
            return (1 - momentum) / (4 * lr * weight_decay)
        return 1 / (2 * lr * weight_decay)


def adamw_equilibrium_norm(lr, weight_decay, numel):
    """AdamW: the equilibrium norm of a scale-invariant row of `numel` elements, √(η·C/(2λ))
    (docs/science.md §3.4).

    Args:
        lr: η; weight_decay: λ; numel: C, the row's (or tensor's) number of elements.

    Returns:
        The norm, of the inputs' type.

    >>> round(float(adamw_equilibrium_norm(3e-3, 0.1, 64)), 4)
    0.9798
    """
    return np.sqrt(lr * numel / (2 * weight_decay))


def correlation_epochs(optimizer: str, lr: float, weight_decay: float, momentum: float, beta1: float,
                       steps_per_epoch: float) -> float | None:
    """The relaxation time in epochs, which is also the correlation time of the norm's fluctuations
    (docs/science.md §3.5, §6.6).

    Args:
        optimizer: the optimizer's name ("SGD", "AdamW", ...).
        lr, weight_decay, momentum, beta1: its settings; NaN where unknown.
        steps_per_epoch: optimizer steps per epoch.

    Returns:
        Epochs, or None when there is no weight decay or a value is unknown.

    >>> round(correlation_epochs("SGD", 0.2, 1e-3, 0.9, float("nan"), 23.0), 2)
    5.43
    >>> correlation_epochs("SGD", 0.2, 0.0, 0.9, float("nan"), 23.0) is None
    True
    """
    values = (lr, weight_decay, steps_per_epoch)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values):
        return None
    family = optimizer_family(optimizer)
    if family in (ADAMW, "adam") or (not family and math.isfinite(beta1)):
        steps = relaxation_steps(ADAMW, lr, weight_decay, 0.0)
    else:
        steps = relaxation_steps(SGD, lr, weight_decay, momentum if math.isfinite(momentum) else 0.0)
    return float(steps) / steps_per_epoch
