"""The terminal summary of `normscope check` (rich): per-rule counts, then every failure."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text

from normscope.check.findings import ERROR, CheckResult
from normscope.report.check_facts import no_limits_note
from normscope.report.escape import printable
from normscope.report.terminal.tables import NAME_WIDTH, Col, FitTable


def _number(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}"


RULE_COLUMNS = (Col("rule", justify="left", wrap=True, min_width=10), Col("checked"), Col("passed"),
                Col("warnings"), Col("errors"))
# a narrow page leaves out the limit, then the value (the message states both), then the rule
DETAIL_COLUMNS = (Col("status", justify="left"), Col("rule", justify="left", drop=3),
                  Col("parameter", justify="left", wrap=True, min_width=NAME_WIDTH), Col("value", drop=2),
                  Col("limit", drop=1), Col("message", justify="left", wrap=True, min_width=24))


def check_view(result: CheckResult, *, show_passing: bool = False, notes: bool = True) -> Group:
    """Per-rule counts, every failure (with `show_passing`, every check), the verdict, and (with
    `notes`) the note that no limit is set (`normscope check` prints it on stderr instead)."""
    counts = result.counts()
    rule_rows = []
    for rule in result.rules:
        mine = [f for f in result.findings if f.rule == rule]
        errors = sum(f.status == ERROR for f in mine)
        rule_rows.append((printable(rule), str(len(mine)), str(sum(f.passed for f in mine)),
                          str(sum(f.status == "warning" for f in mine)),
                          Text(str(errors), style="bold red" if errors else "")))
    rules = FitTable(RULE_COLUMNS, rule_rows, title="normscope check")
    shown = [f for f in result.findings if show_passing or not f.passed]
    styles = {"error": "bold red", "warning": "yellow", "pass": "green"}
    details = FitTable(DETAIL_COLUMNS, [
        (Text(f.status, style=styles[f.status]), printable(f.rule), printable(f.subject), _number(f.value),
         _number(f.limit), printable(f.message)) for f in shown])
    verdict = Text(
        f"{'PASSED' if result.passed else 'FAILED'}: {counts['checks']} checks, {counts['passed']} passed, "
        f"{counts['warnings']} warnings, {counts['errors']} errors",
        style="bold green" if result.passed else "bold red",
    )
    parts: list = [rules, Text("")]
    if shown:
        parts += [details, Text("")]
    parts.append(verdict)
    note = no_limits_note(result) if notes else ""
    if note:
        parts.append(Text(note, style="yellow"))
    return Group(*parts)
