"""Does ABEL's premise hold on this run? Said before any schedule is proposed.

ABEL (docs/science.md) decays the LR when the weight norm bounces. The bounce comes from scale-invariant
weights under weight decay reaching their norm equilibrium, and the rule replaces step decays. So the
advice applies when: some weight tensors are scale-invariant, weight decay is on, the norm can relax to
its equilibrium within the budget (3 relaxation times: e^-3 ≈ 5 % left), and the run's LR schedule is
step-like rather than a smooth anneal (cosine, linear), which moves the equilibrium continuously.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

SETTLING_RELAXATIONS = 3.0
# An LR schedule that changes at more than this share of its epochs anneals smoothly.
SMOOTH_SHARE = 0.25


@dataclass(frozen=True)
class PremiseCheck:
    name: str
    holds: bool | None  # None: cannot tell from the run
    detail: str


@dataclass(frozen=True)
class Premise:
    holds: bool  # every check that could be decided holds
    checks: tuple[PremiseCheck, ...]
    advice: str  # what to do on this run, in plain words


def _lr_changes(lrs: Sequence[float]) -> int:
    finite = [x for x in lrs if math.isfinite(x) and x > 0]
    return sum(1 for a, b in pairwise(finite) if abs(b - a) > 1e-3 * max(a, b))


def abel_premise(rec, invariance: Sequence) -> Premise:
    """The premise of `rec` (a `Recommendation`) on the run whose verdicts are `invariance`."""
    weights = [v for v in invariance if v.kind == "weight"]
    invariant = [v for v in weights if v.invariant is True]
    unknown = [v for v in weights if v.invariant is None]
    if invariant:
        si = PremiseCheck("scale-invariant weights", True,
                          f"{len(invariant)} of {len(weights)} weight tensors are scale-invariant")
    elif unknown:
        si = PremiseCheck("scale-invariant weights", None,
                          f"scale invariance unknown for {len(unknown)} weight tensor(s) (give --model to decide)")
    else:
        si = PremiseCheck("scale-invariant weights", False, "no weight tensor is scale-invariant")
    wd = rec.series.weight_decay
    decay = PremiseCheck("weight decay", bool(wd > 0) if math.isfinite(wd) else None,
                         f"weight decay {wd:g}" if math.isfinite(wd) else "no weight decay recorded")
    relax = rec.relaxation
    if relax is None or relax.epochs is None:
        reach = PremiseCheck("equilibrium within the budget", None,
                             "relaxation time unknown (needs weight decay and steps per epoch)")
    else:
        needed = SETTLING_RELAXATIONS * relax.epochs
        reach = PremiseCheck("equilibrium within the budget", needed <= rec.total_epochs,
                             f"relaxation time {relax.epochs:.1f} epochs at lr {relax.lr:g}: settling takes "
                             f"~{needed:.0f} of the {rec.total_epochs}-epoch budget")
    epochs = len(rec.series.epochs)
    changes = _lr_changes(rec.series.lr)
    smooth = changes > max(3, SMOOTH_SHARE * epochs)
    schedule = PremiseCheck("step-like LR schedule", not smooth,
                            f"the LR changes at {changes} of {epochs} epochs"
                            + (" (a smooth anneal, e.g. cosine)" if smooth else ""))
    checks = (si, decay, reach, schedule)
    holds = all(c.holds is not False for c in checks)
    if holds:
        advice = "ABEL's premise holds on this run: the decays below apply."
    elif si.holds is False and smooth:
        advice = ("No scale-invariant layer and a smooth LR schedule: ABEL's bounce is not expected here; "
                  "keep the schedule you have. The decays below are for reference only.")
    else:
        failed = "; ".join(c.detail for c in checks if c.holds is False)
        advice = (f"ABEL's premise does not hold on this run ({failed}): its decays below are for reference "
                  "only; keep a schedule that works for this setup.")
    return Premise(holds=holds, checks=checks, advice=advice)


__all__ = ["Premise", "PremiseCheck", "abel_premise"]
