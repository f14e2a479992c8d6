"""`normscope check PATH`: hold a training run to rules; exit 0 pass, 1 a rule failed, 2 bad input."""

from __future__ import annotations

import enum
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from normscope.cli._common import (
    ONE_FILE_PER_EPOCH_HELP,
    STEPS_PER_EPOCH_HELP,
    ConfigOpt,
    DeviceOpt,
    EveryOpt,
    ExcludeOpt,
    IncludeOpt,
    RecoverOpt,
    TagPatternOpt,
    check_output_path,
    handle_errors,
    reading_flags,
    stderr_console,
    stdout_console,
)
from normscope.report.escape import json_text, printable


class CheckFormat(str, enum.Enum):
    table = "table"
    json = "json"


def _opt(flag: str, help: str, **kw):
    return typer.Option(flag, help=help, show_default=False, rich_help_panel=kw.pop("panel", None), **kw)


RULES = "Rule overrides (beat env and config file)"


@handle_errors
def check(
    path: Annotated[Path, typer.Argument(help="A checkpoint directory, one checkpoint, or a live log.",
                                         show_default=False, readable=False)],
    config: ConfigOpt = None,
    baseline: Annotated[Path | None, _opt("--baseline", "Compare per-layer norms with this run.",
                                              readable=False)] = None,
    junit: Annotated[Path | None, _opt("--junit", "Also write JUnit XML here.")] = None,
    format: Annotated[CheckFormat, typer.Option("--format", "-f", help="stdout format.")] = CheckFormat.table,
    show_all: Annotated[bool, typer.Option("--all", help="List passing checks too.")] = False,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    every: EveryOpt = None,
    device: DeviceOpt = None,
    steps_per_epoch: Annotated[float | None, _opt("--steps-per-epoch", STEPS_PER_EPOCH_HELP)] = None,
    one_file_per_epoch: Annotated[bool, typer.Option("--one-file-per-epoch", help=ONE_FILE_PER_EPOCH_HELP)]
    = False,
    recover_unsafe: RecoverOpt = False,
    tag_pattern: TagPatternOpt = None,
    nonfinite: Annotated[bool | None, _opt("--nonfinite/--no-nonfinite", "Fail on NaN/Inf weights.",
                                              panel=RULES)] = None,
    kind: Annotated[list[str] | None, _opt("--kind", "Parameter kinds the norm rules read "
                                              "(weight, norm, bias, ...).", panel=RULES)] = None,
    max_growth: Annotated[float | None, _opt("--max-growth", "Max per-layer norm ratio.", panel=RULES)] = None,
    min_growth: Annotated[float | None, _opt("--min-growth", "Min per-layer norm ratio (collapse).",
                                                panel=RULES)] = None,
    growth_measure: Annotated[str | None, _opt("--growth-measure", "last_first or max_min.",
                                                  panel=RULES)] = None,
    min_total_norm: Annotated[float | None, _opt("--min-total-norm", "Lowest total norm allowed.",
                                                    panel=RULES)] = None,
    max_total_norm: Annotated[float | None, _opt("--max-total-norm", "Highest total norm allowed.",
                                                    panel=RULES)] = None,
    bounce_by_epoch: Annotated[str | None, _opt("--bounce-by-epoch", "A bounce must happen by this "
                                                   "epoch; 'none': no bounce may happen.", panel=RULES)] = None,
    equilibrium_min: Annotated[float | None, _opt("--equilibrium-min", "Lowest measured/predicted "
                                                     "equilibrium ratio.", panel=RULES)] = None,
    equilibrium_max: Annotated[float | None, _opt("--equilibrium-max", "Highest measured/predicted "
                                                     "equilibrium ratio.", panel=RULES)] = None,
    baseline_rtol: Annotated[float | None, _opt("--baseline-rtol", "Relative tolerance against the "
                                                   "baseline.", panel=RULES)] = None,
    baseline_atol: Annotated[float | None, _opt("--baseline-atol", "Absolute tolerance against the "
                                                   "baseline.", panel=RULES)] = None,
    warn: Annotated[list[str] | None, _opt("--warn", "Report this rule's failures as warnings "
                                              "(repeatable).", panel=RULES)] = None,
) -> None:
    """Check a run against rules from \\[tool.normscope.check]; exit 1 when one fails (CI gate)."""
    # lazy: the check and its outputs import numpy and pandas, which `normscope --help` does not
    from normscope.check.session import check_path
    from normscope.report.check_facts import no_limits_note  # lazy: as above
    from normscope.report.ci.github import publish  # lazy: as above
    from normscope.report.ci.junit import write_junit  # lazy: as above
    from normscope.report.machine.check_json import check_document  # lazy: as above
    from normscope.report.terminal.check_view import check_view  # lazy: as above

    check_output_path(junit, "--junit")
    flags = {
        **reading_flags(include, exclude, every, device),
        "check.nonfinite": nonfinite, "check.kinds": tuple(kind) if kind else None,
        "check.max_growth": max_growth, "check.min_growth": min_growth,
        "check.growth_measure": growth_measure, "check.min_total_norm": min_total_norm,
        "check.max_total_norm": max_total_norm, "check.bounce_by_epoch": bounce_by_epoch,
        "check.equilibrium_min_ratio": equilibrium_min, "check.equilibrium_max_ratio": equilibrium_max,
        "check.baseline": str(baseline) if baseline else None,
        "check.baseline_rtol": baseline_rtol, "check.baseline_atol": baseline_atol,
        "check.warn": tuple(warn) if warn else None,
    }
    outcome = check_path(path, config_file=config, flags=flags, environ=os.environ, steps_per_epoch=steps_per_epoch,
                         one_file_per_epoch=one_file_per_epoch, recover_unsafe=recover_unsafe,
                         tag_pattern=tag_pattern)
    result = outcome.result

    if junit is not None:
        write_junit(result, junit)
    if format is CheckFormat.json:
        sys.stdout.write(json_text(check_document(result, outcome.resolved.origins)) + "\n")
    else:
        stdout_console().print(check_view(result, show_passing=show_all, notes=False))
    # The runner reads workflow commands from stderr as well as stdout; stderr keeps JSON clean.
    publish(result, os.environ, lambda line: print(line, file=sys.stderr), origins=outcome.resolved.origins)
    for warning in outcome.notes:  # the run's own warnings, labelled as every command labels them
        stderr_console().print(f"normscope: warning: {printable(warning)}")
    if no_limits_note(result):
        stderr_console().print(f"normscope: note: {no_limits_note(result)}")
    raise typer.Exit(result.exit_code)
