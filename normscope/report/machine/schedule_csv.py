"""`normscope recommend --schedule-csv`: the per-epoch LR table as CSV."""

from __future__ import annotations

import csv
import io
import math

from normscope.analysis.recommend import Recommendation
from normscope.lr_schedules import TexpSchedule


def schedule_csv(rec: Recommendation, texp: TexpSchedule | None = None) -> str:
    """Per-epoch LR table: epoch (0-based, being trained), recommended and exact-ABEL LR, what the run
    recorded, the norm at the epoch's start (after `epoch` completed epochs), and TEXP's LR if asked."""
    recorded = dict(zip(rec.series.epochs, zip(rec.series.lr, rec.series.norm_sq)))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["epoch", "lr", "lr_exact_abel", "lr_recorded", "norm_sq_at_start"]
    writer.writerow(header + (["texp_lr"] if texp is not None else []))
    for e in range(rec.total_epochs):
        lr_rec, norm = recorded.get(e, (math.nan, math.nan))
        row = [e, _csv(rec.schedule[e]), _csv(rec.exact_schedule[e]), _csv(lr_rec), _csv(norm)]
        if texp is not None:
            row.append(_csv(texp.epochs[e].texp_lr))
        writer.writerow(row)
    return out.getvalue()


def _csv(x: float) -> str:
    return "" if not math.isfinite(x) else format(float(x), ".12g")  # 12 digits: no 0.020000000000000004
