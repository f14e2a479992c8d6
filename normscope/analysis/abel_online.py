"""The robust ABEL rule run online: decide at each epoch from the epochs seen so far only.

The in-loop scheduler (`normscope.schedulers.ABEL`, its default rule) calls `robust_decay_due` once per
epoch with the end-of-epoch squared norms so far and the epochs it has decayed at. The decision uses
the offline detector (`analysis.bounce.detect_bounces`) on the current LR phase only — the epochs
since the last decay, the noise of one LR is not the noise of another — and fires when the end of a
bounce's rise is seen — now, or later than the rise ended: the threshold is re-estimated as the
phase grows, and on a short prefix the bounce's own bend inflates the noise estimate, so a bounce
may be confirmed several epochs after its rise ended; it is acted on then (once: the decay starts
a new phase). The end of a rise counts once it is seen by the
full smoothing window: at the newest epochs the centred moving average is one-sided and lags, which
makes a rise look as if it were levelling off. Two waits keep it off noise and transients:

* at least one relaxation time τ (docs/science.md §3.5) into the phase: after an LR change the norm is in
  transit to its new equilibrium, and a dip or rise of that transit is no bounce;
* at least `min_phase_epochs` epochs into the phase, and 2τ: the noise model needs lags up to 2τ
  to separate its correlated part (`analysis.norm_noise`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from normscope.analysis.bounce import RobustParams, detect_bounces

MIN_PHASE_EPOCHS = 8


def phase_wait(tau_epochs: float | None, min_phase_epochs: int = MIN_PHASE_EPOCHS) -> int:
    """Epochs a phase must last before the online rule may decay in it."""
    if tau_epochs is None or not math.isfinite(tau_epochs):
        return min_phase_epochs
    return max(min_phase_epochs, math.ceil(2 * tau_epochs))


def robust_decay_due(
    norm_sq: Sequence[float],
    decay_epochs: Sequence[int],
    *,
    tau_epochs: float | None,
    params: RobustParams | None = None,
    min_phase_epochs: int = MIN_PHASE_EPOCHS,
) -> bool:
    """Whether to decay now. `norm_sq[e]` is the squared norm after e completed epochs (e = 0 the
    start); the decision is about the latest one. `tau_epochs`: the relaxation time at the current LR."""
    now = len(norm_sq) - 1
    start = max(decay_epochs) if decay_epochs else 0
    if now - start < phase_wait(tau_epochs, min_phase_epochs):
        return False
    values = [float(v) for v in norm_sq[start:]]
    if any(not (math.isfinite(v) and v > 0) for v in values):
        return False
    params = replace(params or RobustParams(), repeats=0)
    found = detect_bounces(range(start, now + 1), values, params, correlation_epochs=tau_epochs)
    settled = now - params.smooth_window // 2  # the newest epoch whose smoothing window is complete
    return any(
        b.decay_epoch is not None and b.decay_epoch <= settled and b.minimum_epoch > start
        for b in found.bounces
    )
