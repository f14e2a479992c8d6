"""`normscope analyze PATH`: norm trajectories of a run, as a table, JSON, CSV or Parquet."""

from __future__ import annotations

import enum
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from normscope.cli._common import handle_errors, stderr_console


class Format(str, enum.Enum):
    table = "table"
    json = "json"
    csv = "csv"
    parquet = "parquet"


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


PathArg = Annotated[
    Path,
    typer.Argument(help="A checkpoint directory, one checkpoint file, or a live training log.",
                   show_default=False),
]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]
OutputOpt = Annotated[
    Optional[Path], typer.Option("--output", "-o", help="Write the output here instead of stdout.")
]
DeviceOpt = Annotated[Device, typer.Option(help="Where to reduce tensors (auto: CUDA if present).")]
IncludeOpt = Annotated[
    Optional[list[str]],
    typer.Option("--include", help="Only parameters matching this glob (repeatable).", show_default=False),
]
ExcludeOpt = Annotated[
    Optional[list[str]],
    typer.Option("--exclude", help="Drop parameters matching this glob (repeatable).", show_default=False),
]
EveryOpt = Annotated[int, typer.Option(help="Keep every N-th snapshot (the last is always kept).", min=1)]


def progress_reporter():
    """A rich progress bar on stderr (hidden when stderr is not a terminal) and its callback."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    console = stderr_console()
    progress = Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), TimeRemainingColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    )
    task = progress.add_task("reading tensors", total=None)

    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    return progress, update


def emit_text(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        output.write_text(text, encoding="utf-8")


def render_to_text(renderable, width: int = 160) -> str:
    """Plain text of a rich renderable, for `-o FILE` with the table format."""
    import io

    from rich.console import Console

    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, soft_wrap=False).print(renderable)
    return buffer.getvalue()


@handle_errors
def analyze(
    path: PathArg,
    format: FormatOpt = Format.table,
    output: OutputOpt = None,
    device: DeviceOpt = Device.auto,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    every: EveryOpt = 1,
) -> None:
    """Per-layer norm trajectories of a run: first / min / last norm, change, angle moved."""
    from normscope.analysis.summary import summarize_params, summarize_run
    from normscope.api import load_trajectory
    from normscope.errors import BadInputError

    if format is Format.parquet and output is None:
        raise BadInputError("--format parquet writes a binary file: give it with -o FILE.parquet")

    progress, update = progress_reporter()
    with progress:
        traj = load_trajectory(path, include=include or (), exclude=exclude or (), every=every,
                               device=device.value, progress=update)
    run = summarize_run(traj)
    params = summarize_params(traj)

    err = stderr_console()
    for finding in run.nonfinite:
        err.print(f"normscope: warning: {finding.param} holds {finding.count} non-finite value(s) "
                  f"from snapshot {finding.snapshot} on", style="bold red")

    if format is Format.table:
        from normscope.report.analyze_view import analyze_view

        shown = [p for p in params if p.kind != "buffer"]
        view = analyze_view(traj, run, shown)
        if output is None:
            from normscope.cli._common import stdout_console

            stdout_console().print(view)
        else:
            emit_text(render_to_text(view), output)
    elif format is Format.json:
        from normscope.report.analyze_json import analyze_document

        doc = analyze_document(traj, run, params)
        emit_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", output)
    elif format is Format.csv:
        from normscope.report.table_export import to_csv_text

        emit_text(to_csv_text(traj.table), output)
    else:
        from normscope.report.table_export import write_parquet

        assert output is not None
        write_parquet(traj.table, output)
