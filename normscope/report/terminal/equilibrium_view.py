"""The scale-invariance verdicts and the equilibrium report on the terminal. No computing here.

Their JSON is `normscope.report.machine.equilibrium_json`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.text import Text

from normscope.analysis.equilibrium import EquilibriumReport
from normscope.analysis.invariance import INVARIANT, NOT_INVARIANT, InvarianceVerdict
from normscope.report.escape import printable
from normscope.report.quantities import EQUILIBRIUM_COLUMNS, EQUILIBRIUM_LEGEND
from normscope.report.terminal.tables import NAME_WIDTH, Col, FitTable

_VERDICT_STYLE = {INVARIANT: "green", NOT_INVARIANT: "dim", "unknown": "yellow"}
_STATUS_STYLE = {"at equilibrium": "green", "approaching": "cyan", "off": "red", "unknown": "yellow"}


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:.{digits}g}"


def invariance_table(verdicts: Sequence[InvarianceVerdict]) -> FitTable:
    columns = (Col("parameter", justify="left", wrap=True, min_width=NAME_WIDTH), Col("verdict", justify="left"),
               Col("basis", justify="left", drop=1), Col("why", justify="left", wrap=True, min_width=20))
    rows = [(printable(v.param), Text(v.verdict, style=_VERDICT_STYLE.get(v.verdict, "")), printable(v.basis),
             printable(v.reason)) for v in verdicts]
    return FitTable(columns, rows, title="Scale invariance")


def hyperparams_table(report: EquilibriumReport) -> FitTable:
    columns = (Col("name", justify="left"), Col("value", justify="left", wrap=True, min_width=16),
               Col("from", justify="left", wrap=True, min_width=16))
    rows = [(printable(h.name), printable(h.value), printable(h.source)) for h in report.hyperparams]
    return FitTable(columns, rows, title="Hyper-parameters")


def equilibrium_table(report: EquilibriumReport) -> FitTable:
    columns = (Col("parameter", justify="left", wrap=True, min_width=NAME_WIDTH),
               Col("status", justify="left", wrap=True, min_width=11),
               *(Col(column.header, drop=column.drop) for column in EQUILIBRIUM_COLUMNS))
    rows = [(printable(layer.param), Text(layer.status, style=_STATUS_STYLE.get(layer.status, "")),
             *(column.value(layer) for column in EQUILIBRIUM_COLUMNS)) for layer in report.layers]
    return FitTable(columns, rows, title="Equilibrium of scale-invariant layers")


def status_lines(report: EquilibriumReport) -> RenderableType:
    """One line per invariant layer: its status and the reason for it."""
    lines = Text()
    for layer in report.layers:
        lines.append(f"{printable(layer.param)}: ")
        lines.append(layer.status, style=_STATUS_STYLE.get(layer.status, ""))
        lines.append(f" — {printable(layer.reason)}\n")
    return lines


def not_applicable_table(report: EquilibriumReport) -> FitTable:
    columns = (Col("parameter", justify="left", wrap=True, min_width=NAME_WIDTH),
               Col("why", justify="left", wrap=True, min_width=20))
    return FitTable(columns, [(printable(item.param), printable(item.reason)) for item in report.not_applicable],
                    title="Theory does not apply")


def render_invariance(verdicts: Sequence[InvarianceVerdict]) -> RenderableType:
    return invariance_table(verdicts)


def render_equilibrium(report: EquilibriumReport, *, notes: bool = True) -> RenderableType:
    """Hyper-parameters, the invariant layers' equilibrium, the layers the theory skips and (with
    `notes`) the report's notes (`normscope analyze` prints them on stderr instead)."""
    parts: list[RenderableType] = [hyperparams_table(report)]
    if report.layers:
        parts += [Text(""), equilibrium_table(report)]
        parts.append(status_lines(report))
        lo, hi = report.tolerance
        parts.append(Text(f"{EQUILIBRIUM_LEGEND}; at equilibrium: ratio within [{lo:g}, {hi:g}]", style="dim"))
    else:
        parts.append(Text("no scale-invariant layer: the equilibrium theory applies to none", style="yellow"))
    if report.not_applicable:
        parts += [Text(""), not_applicable_table(report)]
    parts.extend(Text(f"note: {printable(note)}", style="dim") for note in (report.notes if notes else ()))
    return Group(*parts)


__all__ = ["equilibrium_table", "hyperparams_table", "invariance_table", "not_applicable_table",
           "render_equilibrium", "render_invariance", "status_lines"]
