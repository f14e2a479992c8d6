"""`normscope analyze PATH`: norm trajectories of a run, as a table, JSON, CSV or Parquet."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated

import typer

from normscope.cli._common import (
    emit_text,
    handle_errors,
    progress_reporter,
    render_to_text,
    stderr_console,
)


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
    Path | None, typer.Option("--output", "-o", help="Write the output here instead of stdout.")
]
DeviceOpt = Annotated[Device, typer.Option(help="Where to reduce tensors (auto: CUDA if present).")]
IncludeOpt = Annotated[
    list[str] | None,
    typer.Option("--include", help="Only parameters matching this glob (repeatable).", show_default=False),
]
ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option("--exclude", help="Drop parameters matching this glob (repeatable).", show_default=False),
]
EveryOpt = Annotated[int, typer.Option(help="Keep every N-th snapshot (the last is always kept).", min=1)]
StepsPerEpochOpt = Annotated[
    float | None,
    typer.Option(help="Group snapshots into epochs by step ÷ this, instead of the recorded epoch.",
                 show_default=False),
]
RecoverOpt = Annotated[
    bool,
    typer.Option(help="Read tensors from torch files that hold other objects (e.g. argparse.Namespace) "
                      "through a restricted unpickler that runs nothing; refused by default."),
]


@handle_errors
def analyze(
    path: PathArg,
    format: FormatOpt = Format.table,
    output: OutputOpt = None,
    device: DeviceOpt = Device.auto,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    every: EveryOpt = 1,
    recover_unsafe: RecoverOpt = False,
    steps_per_epoch: StepsPerEpochOpt = None,
) -> None:
    """Per-layer norm trajectories of a run: first / min / last norm, change, angle moved, bounces."""
    from normscope.analysis.overview import overview
    from normscope.api import load_trajectory
    from normscope.errors import BadInputError

    if format is Format.parquet and output is None:
        raise BadInputError("--format parquet writes a binary file: give it with -o FILE.parquet")

    progress, update = progress_reporter()
    with progress:
        traj = load_trajectory(path, include=include or (), exclude=exclude or (), every=every,
                               device=device.value, progress=update, recover_unsafe=recover_unsafe)
    result = overview(traj, steps_per_epoch=steps_per_epoch)

    err = stderr_console()
    for finding in result.run.nonfinite:
        err.print(f"normscope: warning: {finding.param} holds {finding.count} non-finite value(s) "
                  f"from snapshot {finding.snapshot} on", style="bold red")

    if format is Format.table:
        from normscope.report.analyze_view import analyze_view

        view = analyze_view(traj, result)
        if output is None:
            from normscope.cli._common import stdout_console

            stdout_console().print(view)
        else:
            emit_text(render_to_text(view), output)
    elif format is Format.json:
        from normscope.report.analyze_json import analyze_document

        doc = analyze_document(traj, result)
        emit_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", output)
    elif format is Format.csv:
        from normscope.report.table_export import to_csv_text

        emit_text(to_csv_text(traj.table), output)
    else:
        from normscope.report.table_export import write_parquet

        assert output is not None
        write_parquet(traj.table, output)
