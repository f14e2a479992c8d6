"""The per-neuron (per-row) equilibrium on the terminal, `--granularity row`. No computing here.

Its JSON is `normscope.report.machine.rows_json`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.text import Text

from normscope.analysis.row_equilibrium import RowInterval, latest_by_tensor
from normscope.report.escape import printable
from normscope.report.quantities import ROW_PREDICTION
from normscope.report.terminal.tables import NAME_WIDTH, Col, FitTable


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:.{digits}g}"


def _spread(median: float, p10: float, p90: float) -> str:
    if not math.isfinite(median):
        return "–"
    return f"{_fmt(median)} [{_fmt(p10)}–{_fmt(p90)}]"


# A narrow page leaves out the step, the row count, LR held, the AdamW norms, the share in band, in this order.
ROW_COLUMNS = (
    Col("parameter", justify="left", wrap=True, min_width=NAME_WIDTH),
    Col("to step", drop=1),
    Col("LR held", drop=3),
    Col("rows", drop=2),
    Col("predicted angle (rad, over steps)", wrap=True, min_width=8),
    Col("row angle/pred. median [p10–p90]", wrap=True, min_width=8),
    Col("rows in 0.5–1.5×", drop=5),
    Col("tensor angle/pred."),
    Col("AdamW |w_r|/pred. median [p10–p90]", wrap=True, min_width=8, drop=4),
)


def render_rows(intervals: Sequence[RowInterval], max_rows: int | None = None) -> RenderableType:
    """One line per tensor, from its last settled interval (else its last): how its rows' angular
    updates spread around the prediction, next to the tensor's own ratio."""
    latest = latest_by_tensor(tuple(intervals))
    if not latest:
        return Text("per-neuron equilibrium: no interval with a known step count, lr and weight decay "
                    "under SGD or AdamW", style="dim")
    shown = latest if not max_rows else latest[:max_rows]
    rows = []
    for interval in shown:
        r = interval.result
        rows.append((printable(r.param), f"{interval.step:g}",
                     Text("≥ 3τ", style="green") if interval.settled else Text("< 3τ", style="yellow"),
                     str(r.rows), f"{_fmt(r.predicted_angle_rad)} ({r.steps:g})",
                     _spread(r.angle_ratio_median, r.angle_ratio_p10, r.angle_ratio_p90),
                     "–" if not math.isfinite(r.within_tolerance) else f"{100 * r.within_tolerance:.0f}%",
                     _fmt(r.tensor_angle_ratio),
                     _spread(r.norm_ratio_median, r.norm_ratio_p10, r.norm_ratio_p90)))
    table = FitTable(ROW_COLUMNS, rows, title="Per-neuron equilibrium (rows of each tensor; the last interval after "
                     "its LR held 3 relaxation times, else the last)")
    parts: list[RenderableType] = [table, Text(f"prediction: {ROW_PREDICTION}", style="dim")]
    if len(shown) < len(latest):
        parts.append(Text(f"… {len(latest) - len(shown):,} more tensors not shown (--rows 0 shows all; "
                          "--format json has every interval)", style="dim"))
    return Group(*parts)
