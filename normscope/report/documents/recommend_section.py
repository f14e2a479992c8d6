"""The report's bounce / learning-rate section, from `normscope.analysis.recommend.Recommendation`.

Returns the section plus what the shared plots draw from it: markers at bounce minima and
recommended decays, and the recommended LR schedule as (epoch, lr) steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from normscope.report.documents.document import Bullets, Paragraph, Section, Table
from normscope.report.plots.trajectory_plots import Marker


@dataclass(frozen=True)
class RecommendationView:
    section: Section
    markers: tuple[Marker, ...]
    schedule: tuple[tuple[float, float], ...]


def _fmt(x: float | None, digits: int = 4) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}g}"


def recommendation_view(rec) -> RecommendationView:
    """Section, markers and schedule for one `Recommendation` (read-only: computes nothing new)."""
    series, robust = rec.series, rec.robust
    facts = [
        f"verdict at epoch {rec.verdict.at_epoch}: {rec.verdict.status}",
        *(f"evidence: {e}" for e in rec.verdict.evidence),
        ("recommended decay epochs (robust bounces + final decay): "
         f"{', '.join(map(str, rec.decay_epochs)) or 'none'}; the literal ABEL rule would decay at "
         f"{', '.join(map(str, rec.exact_decay_epochs)) or 'none'}"),
        (f"schedule: base LR {_fmt(rec.base_lr)} ({rec.lr_source}), ×{_fmt(rec.decay_factor)} at each decay "
         f"over {rec.total_epochs} epochs"
         + ("" if rec.budget_given else " (budget taken as the run's length)")),
        f"as code: {rec.multistep}",
        (f"total norm over {', '.join(series.include_kinds)} tensors ({series.n_tensors}), one point per "
         f"epoch from the {series.epoch_source}; noise σ(log N) = {_fmt(robust.noise, 3)} per epoch"),
    ]
    if rec.relaxation is not None:
        epochs = f" ≈ {_fmt(rec.relaxation.epochs, 3)} epochs" if rec.relaxation.epochs is not None else ""
        facts.append(f"norm relaxation time at LR {_fmt(rec.relaxation.lr)}: {_fmt(rec.relaxation.steps, 4)} "
                     f"steps{epochs} ({rec.relaxation.formula})")
    blocks: list = [Bullets(tuple(facts))]
    if robust.bounces:
        rows = tuple((str(b.start_epoch), str(b.minimum_epoch), str(b.confirmed_epoch),
                      "–" if b.rise_end_epoch is None else str(b.rise_end_epoch),
                      "–" if b.decay_epoch is None else str(b.decay_epoch),
                      f"{b.depth:.2%}", f"{b.rise:.2%}", _fmt(b.significance, 3), _fmt(b.confidence, 3))
                     for b in robust.bounces)
        blocks.append(Table(("decline from", "minimum", "confirmed", "rise ends", "decay at", "depth", "rise",
                             "significance (σ)", "confidence"), rows, numeric=(True,) * 9,
                            caption="Bounces of the total norm found by the noise-robust detector"))
    else:
        blocks.append(Paragraph("No bounce of the total norm was detected: ABEL's advice is then a simple "
                                "schedule with one decay near the end of the budget."))
    if rec.advice:
        blocks.append(Bullets(tuple(rec.advice)))
    if rec.notes:
        blocks.append(Bullets(tuple(f"note: {n}" for n in rec.notes)))
    markers = [Marker(float(b.minimum_epoch), "bounce minimum", "tab:blue", ":") for b in robust.bounces]
    markers += [Marker(float(e), "recommended decay", "tab:red", "--") for e in rec.decay_epochs]
    schedule = tuple((float(epoch), float(lr)) for epoch, lr in enumerate(rec.schedule))
    return RecommendationView(Section("Bounce and learning-rate recommendation", tuple(blocks)),
                              tuple(markers), schedule)
