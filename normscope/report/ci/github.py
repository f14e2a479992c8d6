"""GitHub Actions output: workflow-command annotations and a Markdown job summary.

Annotation syntax (docs.github.com, "Workflow commands"): `::error file=F,line=L,title=T::MESSAGE`.
The message escapes `%`, CR and LF; property values escape those plus `:` and `,`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from normscope.check.findings import ERROR, CheckResult, Finding
from normscope.config import Origin
from normscope.report.check_facts import no_limits_note
from normscope.report.escape import (
    github_data,
    github_property,
    markdown_code,
    markdown_text,
)

escape_data = github_data
escape_property = github_property


def is_github_actions(environ: Mapping[str, str]) -> bool:
    return environ.get("GITHUB_ACTIONS") == "true"


def _relative(path: str, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(base.resolve()))
    except ValueError:
        return path


def annotation_location(finding: Finding, origins: Mapping[str, Origin], base: Path) -> dict[str, str]:
    """Where the annotation points: the config line that set the limit, else the snapshot's file."""
    origin = origins.get(finding.config_key or "")
    if origin is not None and origin.kind == "file" and origin.file:
        location = {"file": _relative(origin.file, base)}
        if origin.line:
            location["line"] = str(origin.line)
        return location
    if finding.path:
        return {"file": _relative(finding.path, base)}
    return {}


def annotation(finding: Finding, origins: Mapping[str, Origin] | None = None,
               base: Path | None = None) -> str:
    """One `::error`/`::warning` line for a failed finding."""
    level = "error" if finding.status == ERROR else "warning"
    props = annotation_location(finding, origins or {}, base or Path.cwd())
    props["title"] = f"normscope {finding.rule}: {finding.subject}"
    rendered = ",".join(f"{key}={escape_property(value)}" for key, value in props.items())
    return f"::{level} {rendered}::{escape_data(finding.message)}"


def annotations(result: CheckResult, origins: Mapping[str, Origin] | None = None,
                base: Path | None = None) -> list[str]:
    return [annotation(f, origins, base) for f in result.findings if not f.passed]




def _number(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}"


def summary_markdown(result: CheckResult) -> str:
    """A Markdown summary of the check: verdict, per-rule counts, and every failure."""
    counts = result.counts()
    verdict = "passed" if result.passed else "failed"
    icon = ":white_check_mark:" if result.passed else ":x:"
    lines = [f"## {icon} normscope check {verdict}", "",
             markdown_code(result.run_path)
             + (f" against baseline {markdown_code(result.baseline_path)}" if result.baseline_path else ""),
             "", (f"{counts['checks']} checks: {counts['passed']} passed, {counts['warnings']} warnings, "
                  f"{counts['errors']} errors."), "", "| rule | checked | passed | warnings | errors |",
             "|---|---:|---:|---:|---:|"]
    for rule in result.rules:
        mine = [f for f in result.findings if f.rule == rule]
        lines.append(f"| {rule} | {len(mine)} | {sum(f.passed for f in mine)} | "
                     f"{sum(f.status == 'warning' for f in mine)} | {sum(f.status == ERROR for f in mine)} |")
    note = no_limits_note(result)
    if note:
        lines += ["", f"> {markdown_text(note)}"]
    failed = [f for f in result.findings if not f.passed]
    if failed:
        lines += ["", "| status | rule | parameter | value | limit | message |", "|---|---|---|---:|---:|---|"]
        for f in failed:
            lines.append(f"| {f.status} | {f.rule} | {markdown_code(f.subject)} | {_number(f.value)} | "
                         f"{_number(f.limit)} | {markdown_text(f.message)} |")
    return "\n".join(lines) + "\n"


def publish(result: CheckResult, environ: Mapping[str, str], write_line, *,
            origins: Mapping[str, Origin] | None = None, base: Path | None = None) -> bool:
    """Inside GitHub Actions: print annotations via `write_line` and append the job summary.

    Returns whether it ran (False outside Actions). The summary file is appended to, never replaced,
    so other steps' summaries stay.
    """
    if not is_github_actions(environ):
        return False
    base = base or Path(environ.get("GITHUB_WORKSPACE") or os.getcwd())
    for line in annotations(result, origins, base):
        write_line(line)
    summary_file = environ.get("GITHUB_STEP_SUMMARY")
    if summary_file:
        with open(summary_file, "a", encoding="utf-8") as handle:
            handle.write(summary_markdown(result))
    return True
