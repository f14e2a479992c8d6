"""One name, one unit and one formatter per quantity, for every view that shows it.

The terminal (`analyze`, `watch`), HTML and Markdown take their column headers and number formats
from here, so a quantity reads the same everywhere. JSON keeps the raw values, with the unit in the
key (`_rad`, `_steps`). Not measured is `–`, never 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

NOT_MEASURED = "–"


def _finite(x: float | None) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def angle(rad: float | None) -> str:
    """An angle, shown in degrees (3 significant digits)."""
    if not _finite(rad):
        return NOT_MEASURED
    degrees = math.degrees(rad)
    return f"{degrees:.0f}°" if abs(degrees) >= 100 else f"{degrees:.3g}°"


def ratio(x: float | None) -> str:
    """A dimensionless ratio (3 significant digits)."""
    return f"{x:.3g}" if _finite(x) else NOT_MEASURED


def when(step: int | None, epoch: float | None) -> str:
    """A point of the run: its epoch where known, else its step."""
    if epoch is not None and not (isinstance(epoch, float) and math.isnan(epoch)):
        return f"epoch {round(epoch, 2):g}"
    if step is not None:
        return f"step {step}"
    return NOT_MEASURED


def percent_change(x: float | None) -> str:
    """A relative change (last / first − 1) in percent."""
    return f"{100 * x:+.1f}%" if _finite(x) else NOT_MEASURED


def not_shown_notes(params) -> list[str]:
    """Why a per-parameter table shows `–` where one might expect a number (`ParamSummary` rows)."""
    notes = []
    if any(not _finite(p.rel_change) and _finite(p.first_norm) and p.first_norm > 0 for p in params):
        notes.append("change –: the norm starts near 0 (below 5 % of its largest value), so a relative "
                     "change says nothing")
    if any(not _finite(p.total_angle_rad) for p in params):
        notes.append("angle moved –: not every interval between snapshots has a measured angle (a tracker "
                     "log at every > 1, TensorBoard, a single snapshot)")
    return notes


def steps(x: float | None) -> str:
    return f"{x:.4g}" if _finite(x) else NOT_MEASURED


def relaxations(x: float | None) -> str:
    return f"{x:.2g}" if _finite(x) else NOT_MEASURED


@dataclass(frozen=True)
class Column:
    """A quantity's header and formatter; `drop`: its place in the order a narrow terminal leaves
    columns out (1 first; None: always shown)."""

    header: str
    value: Callable[[Any], str]
    drop: int | None = None


# The equilibrium analysis of one scale-invariant layer (`LayerEquilibrium`), in this order everywhere.
# The τ columns go first on a narrow page: each layer's status line below the table states both.
EQUILIBRIUM_COLUMNS = (
    Column("∠/step predicted", lambda layer: angle(layer.predicted_angle_per_step_rad)),
    Column("∠/step measured", lambda layer: angle(layer.angle_per_step_rad), drop=4),
    Column("ratio last", lambda layer: ratio(layer.ratio)),
    Column("ratio settled", lambda layer: ratio(layer.settled_ratio)),
    Column("η|g|/|w| settled", lambda layer: ratio(layer.settled_grad_ratio), drop=3),
    Column("τ (steps)", lambda layer: steps(layer.relaxation_steps), drop=1),
    Column("τ since LR change", lambda layer: relaxations(layer.relaxations_since_lr_change), drop=2),
)

EQUILIBRIUM_LEGEND = ("∠/step: update angle per optimizer step, measured and as the equilibrium theory predicts; "
                      "ratio = measured / predicted angle (last: the latest interval; settled: the median over "
                      "intervals ≥ 3 relaxation times into their LR phase); η|g|/|w| = measured / √(2ηλ(1−μ)) "
                      "(SGD); τ = relaxation time")

# What the per-neuron (per-row) equilibrium predicts, under its table and in its JSON.
ROW_PREDICTION = ("angle over k steps: arccos((1 − ηλ_eff)^S(k)), i.e. √(2ηλ/(1+μ)) per step for SGD and "
                  "√(2ηλ(1−β₁)/(1+β₁)) for AdamW; AdamW row norm √(η·C/(2λ)) (docs/science.md §3)")
