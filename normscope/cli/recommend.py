"""`normscope recommend PATH`: when to decay the learning rate, from the weight norm (ABEL)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from normscope.analysis.user_model import parameter_names
from normscope.cli._common import (
    ConfigOpt,
    DeviceOpt,
    EveryOpt,
    ExcludeOpt,
    IncludeOpt,
    ModelOpt,
    OneFilePerEpochOpt,
    RecoverOpt,
    StepsPerEpochOpt,
    TagPatternOpt,
    check_output_path,
    emit_text,
    handle_errors,
    progress_reporter,
    reading_options,
    render_to_text,
    stderr_console,
    stdout_console,
)
from normscope.errors import BadInputError
from normscope.report.escape import json_text, printable


class Format(str, enum.Enum):
    table = "table"
    json = "json"
    csv = "csv"


@handle_errors
def recommend(
    path: Annotated[Path, typer.Argument(help="A checkpoint directory, one checkpoint file, or a live log.",
                                         show_default=False, readable=False)],
    lr: Annotated[float | None, typer.Option("--lr", help="Base LR (default: the largest LR recorded).")] = None,
    decay_factor: Annotated[float, typer.Option(help="LR multiplier at each decay.")] = 0.1,
    min_lr: Annotated[float, typer.Option(help="Never decay below this LR.")] = 0.0,
    steps_per_epoch: StepsPerEpochOpt = None,
    one_file_per_epoch: OneFilePerEpochOpt = False,
    total_epochs: Annotated[int | None, typer.Option(
        help="Training budget in epochs (default: the run's length; give it for a run in progress).")] = None,
    include_kinds: Annotated[str, typer.Option(
        help="Tensors in the norm: comma-separated of weight,bias,norm,other, or 'all'.")] = "weight",
    format: Annotated[Format, typer.Option("--format", "-f", help="table, json, or csv (per-epoch LR table).")]
    = Format.table,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
    texp: Annotated[bool, typer.Option("--texp", help="Add Li & Arora's tapered-exponential equivalent.")] = False,
    plot: Annotated[Path | None, typer.Option("--plot", help="Also draw the norm, bounces and LR to FILE.png.")]
    = None,
    device: DeviceOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    every: EveryOpt = None,
    recover_unsafe: RecoverOpt = False,
    tag_pattern: TagPatternOpt = None,
    model: ModelOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Where ABEL would decay the LR on this run, the schedule that makes, and a verdict for its latest epoch."""
    # lazy: the analyses import numpy and pandas, which `normscope --help` does not
    from normscope.analysis.epochs import parse_kinds
    from normscope.analysis.runner import RECOMMENDATION, TEXP, RunOptions, analyze_run  # lazy: as above
    from normscope.api import load_with_options  # lazy: as above

    # what of the run is read: the same options, with the same meaning, as `analyze`'s
    reading_keys = reading_options(path, config, include, exclude, every, device)
    options = RunOptions(**reading_keys, steps_per_epoch=steps_per_epoch, one_file_per_epoch=one_file_per_epoch,
                         total_epochs=total_epochs, kinds=parse_kinds(include_kinds), base_lr=lr,
                         decay_factor=decay_factor, min_lr=min_lr, texp=texp, model_spec=model)
    check_output_path(output)
    check_output_path(plot, "--plot")
    reading = {"recover_unsafe": recover_unsafe, "tag_pattern": tag_pattern}
    if model is not None:
        reading["parameter_order"] = parameter_names(model)
    progress, update = progress_reporter()
    with progress:
        traj = load_with_options(path, options, progress=update, **reading)
    analysis = analyze_run(traj, options, equilibrium=False)
    rec = analysis.recommendation
    if rec is None:
        raise BadInputError(analysis.skipped.get(RECOMMENDATION, "no recommendation"))
    texp_schedule, texp_skipped, premise = analysis.texp, analysis.skipped.get(TEXP), analysis.premise

    err = stderr_console()
    for warning in traj.warnings:
        err.print(f"normscope: warning: {printable(warning)}")
    for note in rec.notes:
        err.print(f"normscope: note: {printable(note)}")
    if texp_skipped:
        err.print(f"normscope: note: --texp skipped: {printable(texp_skipped)}")
    if plot is not None:
        from normscope.report.plots.bounce_plot import plot_recommendation  # lazy: matplotlib, for --plot only

        plot_recommendation(rec, plot, title=Path(path).name)
        err.print(f"normscope: note: plot written to {printable(plot)}")

    if format is Format.json:
        from normscope.report.machine.recommend_json import to_json  # lazy: numpy, not for `--help`

        emit_text(json_text(to_json(rec, texp_schedule, premise)) + "\n", output)
    elif format is Format.csv:
        from normscope.report.machine.schedule_csv import schedule_csv  # lazy: numpy, not for `--help`

        emit_text(schedule_csv(rec, texp_schedule), output)
    else:
        from normscope.report.terminal.recommend_view import recommend_view  # lazy: numpy, not for `--help`

        view = recommend_view(rec, texp_schedule, premise, notes=False)
        if output is None:
            stdout_console().print(view)
        else:
            emit_text(render_to_text(view), output)
