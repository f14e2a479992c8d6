"""`normscope report PATH -o report.html|report.md`: one document to open or attach to a pull request."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from normscope.cli._common import (
    OneFilePerEpochOpt,
    StepsPerEpochOpt,
    check_output_path,
    handle_errors,
    stderr_console,
)
from normscope.report.escape import printable


@handle_errors
def report(
    path: Annotated[Path, typer.Argument(help="A checkpoint directory, one checkpoint, or a live log.",
                                         show_default=False, readable=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="report.html (self-contained) or report.md "
                                         "(PNGs written beside it).", show_default=False)],
    config: Annotated[Path | None, typer.Option("--config", help="Config file (default: found upward).",
                                                   show_default=False, readable=False)] = None,
    include: Annotated[list[str] | None, typer.Option("--include", help="Only parameters matching this glob.",
                                                         show_default=False)] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="Drop parameters matching this glob.",
                                                         show_default=False)] = None,
    every: Annotated[int | None, typer.Option("--every", help="Keep every N-th snapshot.", min=1,
                                                 show_default=False)] = None,
    steps_per_epoch: StepsPerEpochOpt = None,
    one_file_per_epoch: OneFilePerEpochOpt = False,
    total_epochs: Annotated[int | None, typer.Option(
        help="The run's epoch budget, for the recommendation (default: the run's length).", min=1,
        show_default=False)] = None,
) -> None:
    """Write an HTML or Markdown report: run summary, per-layer table, plots, verdicts, advice."""
    # lazy: the analyses import numpy and pandas, which `normscope --help` does not
    from normscope.analysis.runner import RunOptions
    from normscope.api import load_with_options  # lazy: as above
    # lazy: only this command reads the config file (tomllib) and writes documents: 15 ms at every start
    from normscope.config import load_config
    from normscope.report.documents.assemble import run_report  # lazy: matplotlib too
    from normscope.report.documents.write import report_format, write_report  # lazy: as load_config

    report_format(output)  # refuse a bad name or place before reading any checkpoint
    check_output_path(output)
    flags = {"include": tuple(include) if include else None, "exclude": tuple(exclude) if exclude else None,
             "every": every}
    settings = load_config(path, config_file=config, flags=flags).config
    options = RunOptions(include=tuple(settings.include), exclude=tuple(settings.exclude), every=settings.every,
                         device=settings.device, steps_per_epoch=steps_per_epoch,
                         one_file_per_epoch=one_file_per_epoch, total_epochs=total_epochs)
    trajectory = load_with_options(path, options)
    written = write_report(run_report(trajectory, options), output)
    for file in written:
        print(printable(file))  # machine output: the files written, one per line
    for warning in trajectory.warnings:
        stderr_console().print(f"normscope: warning: {printable(warning)}")
