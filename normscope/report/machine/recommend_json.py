"""`normscope recommend --format json` and the bounce section of `normscope analyze --format json`.

Nothing is computed here beyond arranging; every number comes from the `Recommendation` or the
`BounceAnalysis`.
"""

from __future__ import annotations

from typing import Any

from normscope.analysis.bounce import BounceAnalysis
from normscope.analysis.recommend import Recommendation
from normscope.lr_schedules import TexpSchedule
from normscope.report.machine.jsonable import jsonable
from normscope.report.recommend_facts import decay_intervals, retrospective_lines

SCHEMA_VERSION = 1


def bounce_analysis_json(found: BounceAnalysis) -> dict[str, Any]:
    s = found.series
    return jsonable({
        "schema_version": SCHEMA_VERSION,
        "include_kinds": list(s.include_kinds), "epoch_source": s.epoch_source,
        "epochs": list(s.epochs), "norm_sq": list(s.norm_sq),
        "exact_decay_epochs": list(found.exact.decay_epochs),
        "robust_decay_epochs": list(found.robust.decay_epochs),
        "exact": found.exact, "robust": found.robust,
        "layers": [{"layer": lb.layer, "exact_decay_epochs": list(lb.exact.decay_epochs),
                    "robust": None if lb.robust is None else lb.robust.bounces, "note": lb.note}
                   for lb in found.layers],
        "notes": list(s.notes),
    })


def to_json(rec: Recommendation, texp: TexpSchedule | None = None, premise=None) -> dict[str, Any]:
    """The whole recommendation as JSON-safe values; `decay_epochs` are the recommended milestones."""
    s = rec.series
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "decay_epochs": list(rec.decay_epochs),
        "decay_intervals": decay_intervals(rec),
        "exact_decay_epochs": list(rec.exact_decay_epochs),
        "multistep": rec.multistep,
        "verdict": jsonable(rec.verdict),
        "advice": list(rec.advice),
        "base_lr": rec.base_lr,
        "lr_source": rec.lr_source,
        "decay_factor": rec.decay_factor,
        "min_lr": rec.min_lr,
        "total_epochs": rec.total_epochs,
        "budget_given": rec.budget_given,
        "schedule": [{"epoch": e, "lr": lr, "lr_exact_abel": ex}
                     for e, (lr, ex) in enumerate(zip(rec.schedule, rec.exact_schedule))],
        "skipped": jsonable(rec.skipped),
        "relaxation": jsonable(rec.relaxation),
        "past_decays": jsonable(rec.past_decays),
        "norm": {
            "include_kinds": list(s.include_kinds), "n_tensors": s.n_tensors, "epoch_source": s.epoch_source,
            "steps_per_epoch": s.steps_per_epoch, "optimizer": s.optimizer, "weight_decay": s.weight_decay,
            "momentum": s.momentum, "epochs": list(s.epochs), "steps": list(s.steps),
            "norm_sq": list(s.norm_sq), "lr_recorded": list(s.lr),
        },
        "exact": jsonable(rec.exact),
        "robust": jsonable(rec.robust),
        "layers": [{"layer": lb.layer, "exact_decay_epochs": list(lb.exact.decay_epochs),
                    "robust": None if lb.robust is None else jsonable(lb.robust.bounces), "note": lb.note}
                   for lb in rec.layers],
        "notes": list(rec.notes),
    }
    if texp is not None:
        doc["texp"] = jsonable(texp)
    if premise is not None:
        doc["premise"] = jsonable(premise)
    doc["finished"] = not rec.budget_given
    doc["retrospective"] = list(retrospective_lines(rec))
    return jsonable(doc)
