"""The terminal summary of `normscope check` (rich): per-rule counts, then every failure."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from normscope.check.findings import ERROR, CheckResult
from normscope.report.escape import printable


def _number(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}"


def check_view(result: CheckResult, *, show_passing: bool = False) -> Group:
    counts = result.counts()
    rules = Table(title="normscope check", title_justify="left", show_edge=False)
    for column in ("rule", "checked", "passed", "warnings", "errors"):
        rules.add_column(column, justify="left" if column == "rule" else "right")
    for rule in result.rules:
        mine = [f for f in result.findings if f.rule == rule]
        errors = sum(f.status == ERROR for f in mine)
        rules.add_row(rule, str(len(mine)), str(sum(f.passed for f in mine)),
                      str(sum(f.status == "warning" for f in mine)),
                      Text(str(errors), style="bold red" if errors else ""))
    shown = [f for f in result.findings if show_passing or not f.passed]
    details = Table(show_edge=False)
    for column in ("status", "rule", "parameter", "value", "limit", "message"):
        details.add_column(column, justify="right" if column in ("value", "limit") else "left",
                           overflow="fold")
    styles = {"error": "bold red", "warning": "yellow", "pass": "green"}
    for f in shown:
        details.add_row(Text(f.status, style=styles[f.status]), f.rule, printable(f.subject), _number(f.value),
                        _number(f.limit), printable(f.message))
    verdict = Text(
        f"{'PASSED' if result.passed else 'FAILED'}: {counts['checks']} checks, {counts['passed']} passed, "
        f"{counts['warnings']} warnings, {counts['errors']} errors",
        style="bold green" if result.passed else "bold red",
    )
    parts: list = [rules, Text("")]
    if shown:
        parts += [details, Text("")]
    parts.append(verdict)
    note = no_limits_note(result)
    if note:
        parts.append(Text(note, style="yellow"))
    return Group(*parts)


def no_limits_note(result: CheckResult) -> str:
    """A check whose only rule is the non-finite one has no limits: say so, or PASSED reads as more."""
    if set(result.rules) - {"nonfinite"}:
        return ""
    return ("no limits are set: only NaN/Inf values were checked. Set limits in [tool.normscope.check] "
            "(normscope.toml or pyproject.toml) or with flags such as --max-growth, --bounce-by-epoch, "
            "--equilibrium-min")
