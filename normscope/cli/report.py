"""`normscope report PATH -o report.html|report.md`: one document to open or attach to a pull request."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from normscope.cli._common import (
    ConfigOpt,
    DeviceOpt,
    EveryOpt,
    ExcludeOpt,
    IncludeOpt,
    OneFilePerEpochOpt,
    RecoverOpt,
    StepsPerEpochOpt,
    TagPatternOpt,
    check_output_path,
    handle_errors,
    reading_options,
    stderr_console,
)
from normscope.report.escape import printable


@handle_errors
def report(
    path: Annotated[Path, typer.Argument(help="A checkpoint directory, one checkpoint, or a live log.",
                                         show_default=False, readable=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="report.html (self-contained) or report.md "
                                         "(PNGs written beside it).", show_default=False)],
    config: ConfigOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    every: EveryOpt = None,
    device: DeviceOpt = None,
    recover_unsafe: RecoverOpt = False,
    tag_pattern: TagPatternOpt = None,
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
    from normscope.report.documents.assemble import run_report  # lazy: matplotlib too
    from normscope.report.documents.write import report_format, write_report  # lazy: as above

    report_format(output)  # refuse a bad name or place before reading any checkpoint
    check_output_path(output)
    reading_keys = reading_options(path, config, include, exclude, every, device)
    options = RunOptions(**reading_keys, steps_per_epoch=steps_per_epoch,
                         one_file_per_epoch=one_file_per_epoch, total_epochs=total_epochs)
    trajectory = load_with_options(path, options, recover_unsafe=recover_unsafe, tag_pattern=tag_pattern)
    written = write_report(run_report(trajectory, options), output)
    for file in written:
        print(printable(file))  # machine output: the files written, one per line
    for warning in trajectory.warnings:
        stderr_console().print(f"normscope: warning: {printable(warning)}")
