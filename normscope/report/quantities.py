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
    return f"{math.degrees(rad):.3g}°" if _finite(rad) else NOT_MEASURED


def ratio(x: float | None) -> str:
    """A dimensionless ratio (3 significant digits)."""
    return f"{x:.3g}" if _finite(x) else NOT_MEASURED


def steps(x: float | None) -> str:
    return f"{x:.4g}" if _finite(x) else NOT_MEASURED


def relaxations(x: float | None) -> str:
    return f"{x:.2g}" if _finite(x) else NOT_MEASURED


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[Any], str]


# The equilibrium analysis of one scale-invariant layer (`LayerEquilibrium`), in this order everywhere.
EQUILIBRIUM_COLUMNS = (
    Column("∠/step predicted", lambda layer: angle(layer.predicted_angle_per_step_rad)),
    Column("∠/step measured", lambda layer: angle(layer.angle_per_step_rad)),
    Column("ratio last", lambda layer: ratio(layer.ratio)),
    Column("ratio settled", lambda layer: ratio(layer.settled_ratio)),
    Column("η|g|/|w| settled", lambda layer: ratio(layer.settled_grad_ratio)),
    Column("τ (steps)", lambda layer: steps(layer.relaxation_steps)),
    Column("τ since LR change", lambda layer: relaxations(layer.relaxations_since_lr_change)),
)

EQUILIBRIUM_LEGEND = ("∠/step: update angle per optimizer step, measured and as the equilibrium theory predicts; "
                      "ratio = measured / predicted angle (last: the latest interval; settled: the median over "
                      "intervals ≥ 3 relaxation times into their LR phase); η|g|/|w| = measured / √(2ηλ(1−μ)) "
                      "(SGD); τ = relaxation time")
