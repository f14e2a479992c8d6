"""Terminal and JSON views of the scale-invariance verdicts and the equilibrium report. No computing here."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from normscope.analysis.equilibrium import EquilibriumReport
from normscope.analysis.invariance import INVARIANT, NOT_INVARIANT, InvarianceVerdict
from normscope.report.escape import printable
from normscope.report.jsonable import jsonable
from normscope.report.quantities import EQUILIBRIUM_COLUMNS, EQUILIBRIUM_LEGEND

JSON_SCHEMA_VERSION = 1

_VERDICT_STYLE = {INVARIANT: "green", NOT_INVARIANT: "dim", "unknown": "yellow"}
_STATUS_STYLE = {"at equilibrium": "green", "approaching": "cyan", "off": "red", "unknown": "yellow"}


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:.{digits}g}"


def invariance_table(verdicts: Sequence[InvarianceVerdict]) -> Table:
    table = Table(title="Scale invariance", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("parameter", overflow="fold")
    table.add_column("verdict")
    table.add_column("basis")
    table.add_column("why", overflow="fold")
    for v in verdicts:
        table.add_row(printable(v.param), Text(v.verdict, style=_VERDICT_STYLE.get(v.verdict, "")), printable(v.basis),
                      printable(v.reason))
    return table


def hyperparams_table(report: EquilibriumReport) -> Table:
    table = Table(title="Hyper-parameters", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("name")
    table.add_column("value")
    table.add_column("from")
    for h in report.hyperparams:
        table.add_row(printable(h.name), printable(h.value), printable(h.source))
    return table


def equilibrium_table(report: EquilibriumReport) -> Table:
    table = Table(title="Equilibrium of scale-invariant layers", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("parameter", overflow="fold", no_wrap=True)
    table.add_column("status")
    for column in EQUILIBRIUM_COLUMNS:
        table.add_column(column.header, justify="right", overflow="fold")
    for layer in report.layers:
        table.add_row(printable(layer.param), Text(layer.status, style=_STATUS_STYLE.get(layer.status, "")),
                      *(column.value(layer) for column in EQUILIBRIUM_COLUMNS))
    return table


def status_lines(report: EquilibriumReport) -> RenderableType:
    """One line per invariant layer: its status and the reason for it."""
    lines = Text()
    for layer in report.layers:
        lines.append(f"{printable(layer.param)}: ")
        lines.append(layer.status, style=_STATUS_STYLE.get(layer.status, ""))
        lines.append(f" — {printable(layer.reason)}\n")
    return lines


def not_applicable_table(report: EquilibriumReport) -> Table:
    table = Table(title="Theory does not apply", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("parameter", overflow="fold")
    table.add_column("why", overflow="fold")
    for item in report.not_applicable:
        table.add_row(printable(item.param), printable(item.reason))
    return table


def render_invariance(verdicts: Sequence[InvarianceVerdict]) -> RenderableType:
    return invariance_table(verdicts)


def render_equilibrium(report: EquilibriumReport) -> RenderableType:
    """Hyper-parameters, the invariant layers' equilibrium, and the layers the theory skips."""
    parts: list[RenderableType] = [hyperparams_table(report)]
    if report.layers:
        parts.append(equilibrium_table(report))
        parts.append(status_lines(report))
        lo, hi = report.tolerance
        parts.append(Text(f"{EQUILIBRIUM_LEGEND}; at equilibrium: ratio within [{lo:g}, {hi:g}]", style="dim"))
    else:
        parts.append(Text("no scale-invariant layer: the equilibrium theory applies to none", style="yellow"))
    if report.not_applicable:
        parts.append(not_applicable_table(report))
    parts.extend(Text(printable(note), style="dim") for note in report.notes)
    return Group(*parts)


def to_json(verdicts: Sequence[InvarianceVerdict], report: EquilibriumReport | None = None) -> dict:
    """JSON-safe dict: `scale_invariant` (param → true/false/null), `evidence` (param → records),
    `invariance` (the verdicts) and, when given, `equilibrium` (the full report)."""
    out: dict = {
        "schema_version": JSON_SCHEMA_VERSION,
        "scale_invariant": {v.param: v.invariant for v in verdicts},
        "evidence": {v.param: jsonable(list(v.evidence)) for v in verdicts},
        "invariance": [
            {"param": v.param, "layer": v.layer, "kind": v.kind, "verdict": v.verdict, "basis": v.basis, "reason": v.reason}
            for v in verdicts
        ],
    }
    if report is not None:
        out["equilibrium"] = jsonable(report)
    return out


__all__ = ["JSON_SCHEMA_VERSION", "equilibrium_table", "hyperparams_table", "invariance_table", "not_applicable_table",
           "render_equilibrium", "render_invariance", "status_lines", "to_json"]
