"""What every `normscope recommend` output says alike: the recommended decays with their intervals, and
the retrospective of a finished run. The terminal view and the JSON document both take them from here.
"""

from __future__ import annotations

from typing import Any

from normscope.analysis.recommend import Recommendation


def _epochs(values) -> str:
    return ", ".join(str(v) for v in values) or "none"


def decay_intervals(rec: Recommendation) -> list[dict[str, Any]]:
    """Each recommended decay with where repeats of the run (other seeds) would put it: the robust
    detector's interval at `interval_confidence` and the bounce's confidence (docs/science.md §6.4);
    a budget decay is a point, with no confidence to give."""
    bounces = {b.decay_epoch: b for b in rec.robust.bounces if b.decay_epoch is not None}
    out = []
    for epoch, (low, high) in zip(rec.decay_epochs, rec.decay_intervals or [(e, e) for e in rec.decay_epochs]):
        bounce = bounces.get(epoch)
        out.append({"epoch": epoch, "low": low, "high": high,
                    "interval_confidence": rec.interval_confidence if bounce is not None else None,
                    "confidence": bounce.confidence if bounce is not None else None,
                    "from": "robust bounce" if bounce is not None else "budget"})
    return out


def retrospective_lines(rec: Recommendation) -> tuple[str, ...]:
    """For a finished run (no budget given: its length is the budget): what it did against where ABEL
    would have decayed. Empty for a run in progress."""
    if rec.budget_given:
        return ()
    did = ", ".join(f"{d.epoch} ({d.lr_before:g} → {d.lr_after:g})" for d in rec.past_decays)
    did = f"It decayed the LR at epoch {did}" if did else "It made no step decay of the LR"
    early = [d.epoch for d in rec.past_decays if d.premature]
    lines = [(f"Finished run: its {rec.total_epochs} epochs are taken as the budget (give --total-epochs for a "
              "run in progress)."),
             f"{did}; ABEL would have decayed at epoch {_epochs(rec.decay_epochs)}."]
    if early:
        lines.append(f"The decay at epoch {_epochs(early)} came before the norm could reach its equilibrium.")
    return tuple(lines)
