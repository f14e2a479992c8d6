"""When to decay the learning rate, from the weight norm: ABEL's decay epochs and the advice around them.

`recommend(series, ...)` is a pure function of the end-of-epoch series (`analysis.epochs`). The schedule
it recommends uses the robust detector's decays (the exact rule's are reported next to them), plus the
paper's final decay at ~85 % of the budget, and keeps decays at least one relaxation time apart: after a
decay the norm needs about 1/(4·η·λ/(1−μ)) steps (SGD with momentum) or 1/(2·η·λ) steps (AdamW) to reach
its new equilibrium (docs/science.md §3.5), so a second decay before then acts on a norm still in transit.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from normscope.analysis.abel_rule import final_decay_epoch
from normscope.analysis.bounce import (
    AbelReplay,
    BounceDetection,
    LayerBounces,
    RobustParams,
    abel_replay,
    detect_bounces,
    layer_bounces,
)
from normscope.analysis.epochs import EpochSeries, epoch_series
from normscope.analysis.theory import ADAMW, SGD, relaxation_steps
from normscope.errors import BadInputError
from normscope.lr_schedules import multistep_line, step_schedule

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

VERDICT_DECAY_NOW = "decay now"
VERDICT_NOT_YET = "not yet"
VERDICT_NO_BOUNCE = "no bounce expected"


@dataclass(frozen=True)
class RelaxationTime:
    steps: float
    epochs: float | None  # None when steps per epoch are unknown
    lr: float
    formula: str


@dataclass(frozen=True)
class PastDecay:
    """An LR decrease recorded in the run (a change between consecutive end-of-epoch snapshots)."""

    epoch: int  # first epoch label at which the lower LR is recorded
    lr_before: float
    lr_after: float
    epochs_since_previous: int  # since the previous LR change, or since the first epoch
    relaxation_epochs: float | None  # at lr_before
    premature: bool | None  # came before the norm could reach its equilibrium; None if unknown


@dataclass(frozen=True)
class SkippedDecay:
    epoch: int
    reason: str


@dataclass(frozen=True)
class Verdict:
    status: str  # VERDICT_DECAY_NOW, VERDICT_NOT_YET or VERDICT_NO_BOUNCE
    at_epoch: int  # the latest epoch, which the verdict is about
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class Recommendation:
    series: EpochSeries
    exact: AbelReplay
    robust: BounceDetection
    layers: tuple[LayerBounces, ...]
    total_epochs: int
    budget_given: bool  # False: the budget was taken to be the run's length
    decay_epochs: tuple[int, ...]  # recommended milestones (robust bounces + budget, spaced)
    exact_decay_epochs: tuple[int, ...]  # where the literal ABEL rule (+ budget) decays
    skipped: tuple[SkippedDecay, ...]
    base_lr: float
    lr_source: str
    decay_factor: float
    min_lr: float
    schedule: tuple[float, ...]  # LR for each epoch 0..total_epochs−1
    exact_schedule: tuple[float, ...]  # the same under the literal ABEL rule's decays
    multistep: str
    relaxation: RelaxationTime | None
    past_decays: tuple[PastDecay, ...]
    verdict: Verdict
    advice: tuple[str, ...]
    notes: tuple[str, ...]
    # per recommended milestone, the epochs where a repeat of the run (another seed) would put it, at
    # `interval_confidence` (a budget decay is exact: (epoch, epoch))
    decay_intervals: tuple[tuple[int, int], ...] = ()
    interval_confidence: float = math.nan


def relaxation_time(
    optimizer: str, lr: float, weight_decay: float, momentum: float, beta1: float, steps_per_epoch: float | None
) -> RelaxationTime | None:
    """Steps (and epochs) for the norm to relax to equilibrium after an LR change; None without decay."""
    if not (math.isfinite(weight_decay) and weight_decay > 0 and math.isfinite(lr) and lr > 0):
        return None
    adam = optimizer.lower().startswith("adam") or (not optimizer and math.isfinite(beta1))
    if adam:
        steps = float(relaxation_steps(ADAMW, lr, weight_decay, 0.0))
        formula = "1/(2·lr·wd)"
    else:
        mu = momentum if math.isfinite(momentum) else 0.0
        steps = float(relaxation_steps(SGD, lr, weight_decay, mu))
        formula = "1/(4·lr·wd/(1−μ))"
    epochs = steps / steps_per_epoch if steps_per_epoch else None
    return RelaxationTime(steps, epochs, lr, formula)


def recommend(
    series: EpochSeries,
    *,
    lr: float | None = None,
    decay_factor: float = 0.1,
    min_lr: float = 0.0,
    total_epochs: int | None = None,
    final_fraction: float = 0.85,
    params: RobustParams | None = None,
) -> Recommendation:
    """Decay epochs (exact and robust), the LR schedule they make, the live verdict and the advice."""
    if not 0 < decay_factor < 1:
        raise BadInputError(f"--decay-factor must be between 0 and 1, got {decay_factor}")
    if not (math.isfinite(min_lr) and min_lr >= 0):
        raise BadInputError(f"--min-lr must be ≥ 0, got {min_lr}")
    base_lr, lr_source = _base_lr(series, lr)
    last_epoch = series.epochs[-1]
    if total_epochs is not None and total_epochs < last_epoch:
        raise BadInputError(f"--total-epochs {total_epochs} is shorter than the run ({last_epoch} epochs)")
    budget_given = total_epochs is not None
    total = total_epochs if total_epochs is not None else last_epoch
    if total < 1:
        raise BadInputError("the run has no completed epoch")
    final = final_decay_epoch(total, final_fraction)

    exact = abel_replay(series.epochs, series.norm_sq, total_epochs=total, final_fraction=final_fraction)
    past, smooth_note = _past_decays(series)
    # the norm's fluctuations are correlated over the relaxation time of the LR it was trained with
    tau_rt = relaxation_time(series.optimizer, base_lr, series.weight_decay, series.momentum, series.beta1,
                             series.steps_per_epoch)
    tau = None if tau_rt is None else tau_rt.epochs
    robust = detect_bounces(series.epochs, series.norm_sq, params, correlation_epochs=tau)
    layers = layer_bounces(series, params, correlation_epochs=tau)

    def relax_epochs(at_lr: float) -> float | None:
        rt = relaxation_time(series.optimizer, at_lr, series.weight_decay, series.momentum, series.beta1,
                             series.steps_per_epoch)
        return None if rt is None else rt.epochs

    candidates = sorted({(d, "robust bounce") for d in robust.decay_epochs if d < total} | {(final, "budget")})
    kept, skipped = _space_decays(candidates, base_lr, decay_factor, min_lr, relax_epochs)
    schedule = step_schedule(base_lr, kept, decay_factor, total, min_lr)
    relaxation = relaxation_time(series.optimizer, base_lr, series.weight_decay, series.momentum, series.beta1,
                                 series.steps_per_epoch)
    verdict = _verdict(series, robust, exact, past, budget_given, final, relax_epochs)
    advice = _advice(robust, exact, kept, final, total, budget_given)
    notes = list(series.notes) + ([smooth_note] if smooth_note else [])
    if relaxation is None:
        notes.append("no weight decay recorded: the norm has no equilibrium, decays are not spaced by it")
    elif relaxation.epochs is None:
        notes.append("steps per epoch unknown: relaxation time only in steps; pass --steps-per-epoch")
    return Recommendation(
        series=series, exact=exact, robust=robust, layers=layers, total_epochs=total, budget_given=budget_given,
        decay_epochs=tuple(kept), exact_decay_epochs=exact.decay_epochs, skipped=tuple(skipped),
        base_lr=base_lr, lr_source=lr_source, decay_factor=decay_factor, min_lr=min_lr, schedule=schedule,
        exact_schedule=step_schedule(base_lr, exact.decay_epochs, decay_factor, total, min_lr),
        multistep=multistep_line(kept, decay_factor), relaxation=relaxation, past_decays=past,
        verdict=verdict, advice=advice, notes=tuple(notes),
        decay_intervals=_intervals(kept, robust, final), interval_confidence=robust.params.interval_confidence,
    )


def _intervals(kept, robust: BounceDetection, final: int) -> tuple[tuple[int, int], ...]:
    """Each kept milestone's interval: its bounce's (repeats of the run), or the point itself."""
    by_decay = {b.decay_epoch: b.decay_interval for b in robust.bounces if b.decay_interval is not None}
    return tuple(by_decay.get(e, (e, e)) if e != final or e in by_decay else (e, e) for e in kept)


def _base_lr(series: EpochSeries, lr: float | None) -> tuple[float, str]:
    if lr is not None:
        if not (math.isfinite(lr) and lr > 0):
            raise BadInputError(f"--lr must be a positive number, got {lr}")
        return float(lr), "--lr"
    known = [x for x in series.lr if math.isfinite(x)]
    if not known:
        raise BadInputError("the checkpoints record no learning rate; pass --lr")
    peak = max(known)
    if peak <= 0:
        raise BadInputError("the recorded learning rate is zero; pass the intended base LR with --lr")
    return peak, "largest LR recorded in the run"


def _past_decays(series: EpochSeries) -> tuple[tuple[PastDecay, ...], str]:
    """LR decreases of a step schedule, each judged against the relaxation time; a smooth schedule
    (cosine, linear: the LR changes at most epochs) is reported as such instead of as many decays."""
    out: list[PastDecay] = []
    changes = 0
    previous_change = series.epochs[0]
    for (_, lr0), (e1, lr1) in itertools.pairwise(zip(series.epochs, series.lr)):
        if not (math.isfinite(lr0) and math.isfinite(lr1)) or math.isclose(lr0, lr1, rel_tol=1e-9):
            continue
        changes += 1
        if lr1 < lr0:
            rt = relaxation_time(series.optimizer, lr0, series.weight_decay, series.momentum, series.beta1,
                                 series.steps_per_epoch)
            since = e1 - previous_change
            relax = None if rt is None else rt.epochs
            out.append(PastDecay(e1, lr0, lr1, since, relax, None if relax is None else since < relax))
        previous_change = e1
    transitions = len(series.epochs) - 1
    if changes > max(3, transitions // 3):
        return (), (f"the LR changes at {changes} of {transitions} epochs (a smooth schedule): "
                    "its decays are not judged one by one against the relaxation time")
    return tuple(out), ""


def _space_decays(candidates, base_lr, factor, min_lr, relax_epochs):
    """Keep decays in time order, dropping any that comes within a relaxation time of the last kept one."""
    kept: list[int] = []
    skipped: list[SkippedDecay] = []
    lr_now = base_lr
    for epoch, why in candidates:
        if kept and epoch == kept[-1]:
            continue
        if lr_now <= min_lr:
            skipped.append(SkippedDecay(epoch, f"{why}: the LR is already at --min-lr {min_lr:g}"))
            continue
        relax = relax_epochs(lr_now) if kept else None
        if kept and relax is not None and epoch - kept[-1] < relax:
            skipped.append(SkippedDecay(
                epoch, f"{why}: {epoch - kept[-1]} epoch(s) after the decay at {kept[-1]}, "
                f"within the relaxation time ({relax:.1f} epochs at lr {lr_now:g})"))
            continue
        kept.append(epoch)
        lr_now = max(lr_now * factor, min_lr)
    return kept, skipped


def _verdict(series, robust, exact, past, budget_given, final, relax_epochs) -> Verdict:
    last = series.epochs[-1]
    phase_start = past[-1].epoch if past else series.epochs[0]
    lr_now = series.lr[-1] if math.isfinite(series.lr[-1]) else math.nan
    evidence: list[str] = []
    if any(d.reason == "bounce" and d.epoch == last for d in exact.decays):
        evidence.append(f"the exact ABEL rule fires at epoch {last} (second sign change of ΔN)")
    elif exact.reached_minimum:
        evidence.append("the exact ABEL rule has seen the norm's minimum and waits for the next sign change "
                        "of ΔN (the end of the rise)")
    relax = relax_epochs(lr_now) if math.isfinite(lr_now) else None
    if past and relax is not None and last - phase_start < relax:
        evidence.append(f"the last LR decay was at epoch {phase_start}; the norm needs ≈{relax:.1f} epochs "
                        f"to relax at lr {lr_now:g}, {last - phase_start} have passed")
        return Verdict(VERDICT_NOT_YET, last, tuple(evidence))
    if budget_given and last >= final and not any(d.epoch >= final for d in past):
        evidence.append(f"epoch {last} is past {final}, ~85 % of the budget: the final decay is due")
        return Verdict(VERDICT_DECAY_NOW, last, tuple(evidence))
    current = [b for b in robust.bounces if b.minimum_epoch >= phase_start]
    if current:
        b = current[-1]
        dip = f"the norm fell {b.depth:.1%} from epoch {b.start_epoch} to a minimum at epoch {b.minimum_epoch}"
        if b.decay_epoch is not None:
            evidence.append(f"{dip}, rose {b.rise:.1%} and levelled off at epoch {b.rise_end_epoch} "
                            f"(confidence {b.confidence:.3f}); no LR decay recorded since")
            return Verdict(VERDICT_DECAY_NOW, last, tuple(evidence))
        evidence.append(f"{dip} and is still rising ({b.rise:.1%} so far): decay when the rise levels off")
        return Verdict(VERDICT_NOT_YET, last, tuple(evidence))
    if robust.trend_at_end == "falling":
        evidence.append(f"the norm has been falling since epoch {robust.last_turn_epoch}; a bounce may follow")
        return Verdict(VERDICT_NOT_YET, last, tuple(evidence))
    shape = "rising" if robust.trend_at_end == "rising" else "flat within its noise"
    evidence.append(f"no dip stands out of the noise (σ = {robust.noise:.2e} in log N per epoch); "
                    f"the norm is {shape}")
    evidence.append(f"the paper's advice: one decay late in training (epoch {final}, ~85 % of the budget)")
    return Verdict(VERDICT_NO_BOUNCE, last, tuple(evidence))


def _advice(robust, exact, kept, final, total, budget_given) -> tuple[str, ...]:
    budget = f"the {total}-epoch budget" + ("" if budget_given else ", taken to be this run's length")
    lines: list[str] = []
    if not robust.bounces:
        lines.append(f"No weight-norm bounce: use a simple schedule with a single decay late in training — "
                     f"decay once at epoch {final} (~85 % of {budget}).")
    else:
        found = ", ".join(str(b.minimum_epoch) for b in robust.bounces)
        ends = ", ".join("still rising" if b.rise_end_epoch is None else str(b.rise_end_epoch) for b in robust.bounces)
        lines.append(f"The norm bounces: minimum at epoch {found}, the rise ends at epoch {ends}. "
                     f"Decay at epoch {', '.join(map(str, kept))} — ABEL decays when each rise ends, plus once "
                     f"at epoch {final} (~85 % of {budget}); decays within a relaxation time of the previous "
                     "one are dropped.")
    bounce_decays = [d for d in exact.decays if d.reason == "bounce"]
    if len(bounce_decays) > len(robust.decay_epochs) + 1:
        lines.append(f"The exact ABEL rule would decay {len(bounce_decays)} times: the epoch-to-epoch noise "
                     f"(σ = {robust.noise:.2e}) flips the sign of ΔN, so its sign test fires on noise here.")
    return tuple(lines)


def recommend_table(
    table: pd.DataFrame,
    *,
    include_kinds: tuple[str, ...] | str | None = None,
    steps_per_epoch: float | None = None,
    **options: Any,
) -> Recommendation:
    """`recommend` straight from the trajectory table: `epoch_series` then `recommend(**options)`."""
    series = epoch_series(table, include_kinds=include_kinds, steps_per_epoch=steps_per_epoch)
    return recommend(series, **options)
