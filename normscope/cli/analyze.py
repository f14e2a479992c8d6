"""`normscope analyze PATH`: norm trajectories of a run, as a table, JSON, CSV or Parquet."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from normscope.analysis.user_model import parameter_names
from normscope.cli._common import (
    GRANULARITY_HELP,
    ConfigOpt,
    DeviceOpt,
    EveryOpt,
    ExcludeOpt,
    Granularity,
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
    parquet = "parquet"


PathArg = Annotated[
    Path,
    typer.Argument(help="A checkpoint directory, one checkpoint file, or a live training log.",
                   show_default=False, readable=False),
]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]
OutputOpt = Annotated[
    Path | None, typer.Option("--output", "-o", help="Write the output here instead of stdout.")
]
RowsOpt = Annotated[
    int,
    typer.Option("--rows", help="Table format: rows per per-parameter table (0: all); csv, json and "
                 "parquet always hold every parameter.", min=0),
]
PlotsOpt = Annotated[
    Path | None,
    typer.Option(help="Write the equilibrium plots (PNG) into this directory (implies --equilibrium).",
                 show_default=False),
]
ClusterOpt = Annotated[
    str | None,
    typer.Option("--cluster", help="Reduce on the Dask scheduler at this address (tcp://HOST:8786); every "
                 "worker must see PATH at the same path. Needs normscope\\[dask].", show_default=False),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", help="Reduce on a local Dask cluster of N worker processes.", min=1,
                 show_default=False),
]
GranularityOpt = Annotated[Granularity, typer.Option(help=GRANULARITY_HELP)]
EquilibriumOpt = Annotated[
    bool, typer.Option(help="Add the equilibrium report for scale-invariant layers (predicted vs measured).")
]


@handle_errors
def analyze(
    path: PathArg,
    format: FormatOpt = Format.table,
    output: OutputOpt = None,
    device: DeviceOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    every: EveryOpt = None,
    rows: RowsOpt = 200,
    recover_unsafe: RecoverOpt = False,
    steps_per_epoch: StepsPerEpochOpt = None,
    one_file_per_epoch: OneFilePerEpochOpt = False,
    cluster: ClusterOpt = None,
    workers: WorkersOpt = None,
    tag_pattern: TagPatternOpt = None,
    equilibrium: EquilibriumOpt = False,
    granularity: GranularityOpt = Granularity.tensor,
    model: ModelOpt = None,
    config: ConfigOpt = None,
    plots: PlotsOpt = None,
    optimizer: Annotated[str | None, typer.Option(help="Override the optimizer type (SGD, AdamW).",
                                                  rich_help_panel="Hyper-parameter overrides")] = None,
    lr: Annotated[float | None, typer.Option(help="Override the learning rate.",
                                             rich_help_panel="Hyper-parameter overrides")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Override the weight decay.",
                                                       rich_help_panel="Hyper-parameter overrides")] = None,
    momentum: Annotated[float | None, typer.Option(help="Override SGD momentum.",
                                                   rich_help_panel="Hyper-parameter overrides")] = None,
    beta1: Annotated[float | None, typer.Option(help="Override Adam's beta1.",
                                                rich_help_panel="Hyper-parameter overrides")] = None,
) -> None:
    """Per-layer norm trajectories of a run: first / min / last norm, change, angle moved, bounces."""
    from normscope.analysis.options import RunOptions  # lazy: `normscope --help` reads no run
    from normscope.api import load_trajectory  # lazy: numpy and pandas, which `--help` does not import

    reading_keys = reading_options(path, config, include, exclude, every, device)
    options = RunOptions(**reading_keys, steps_per_epoch=steps_per_epoch,
                         one_file_per_epoch=one_file_per_epoch, model_spec=model, optimizer=optimizer, lr=lr,
                         weight_decay=weight_decay, momentum=momentum, beta1=beta1)
    if format is Format.parquet and output is None:
        raise BadInputError("--format parquet writes a binary file: give it with -o FILE.parquet")
    if plots is not None and plots.exists() and not plots.is_dir():
        raise BadInputError(f"--plots wants a directory, and {plots} is a file")
    check_output_path(output)

    progress, update = progress_reporter()
    selection = {"include": options.include, "exclude": options.exclude, "every": options.every,
                 "device": options.device, "one_file_per_epoch": options.one_file_per_epoch,
                 "progress": update, "recover_unsafe": recover_unsafe, "granularity": granularity.value}
    if model is not None and not (cluster or workers):
        # the exact order for optimizer state whose weights file lost it (safetensors)
        selection["parameter_order"] = parameter_names(model)
    with progress:
        if cluster or workers:
            from normscope.distributed import load_trajectory_distributed  # lazy: the Dask backend, with --cluster

            traj = load_trajectory_distributed(path, cluster=cluster, workers=workers, **selection)
        else:
            traj = load_trajectory(path, tag_pattern=tag_pattern, **selection)
    with_equilibrium = equilibrium or plots is not None
    result = None
    if format in (Format.table, Format.json) or with_equilibrium:
        from normscope.analysis.runner import analyze_run  # lazy: the analyses, for the views that show them

        # the live frame is the json document's section; the table view does not show it
        result = analyze_run(traj, options, equilibrium=with_equilibrium, recommendation=False,
                             live=format is Format.json)
        run_summary, report = result.run, result.equilibrium
    else:
        # csv and parquet write the table alone: of the analyses only the run summary's
        # non-finite findings reach the user (on stderr, below)
        from normscope.analysis.summary import summarize_run  # lazy: as the analyses above

        run_summary, report = summarize_run(traj), None
    if plots is not None:
        # lazy: matplotlib, only when plots are written
        from normscope.report.plots.equilibrium_plots import plot_equilibrium, plot_ratio_heatmap

        plots.mkdir(parents=True, exist_ok=True)
        if report is not None and report.layers:
            plot_equilibrium(report, plots / "equilibrium.png")
            plot_ratio_heatmap(report, plots / "equilibrium_heatmap.png")

    err = stderr_console()
    # on stderr in every format, once: the table view leaves them out, csv and parquet have no room
    for warning in traj.warnings:
        err.print(f"normscope: warning: {printable(warning)}", markup=False)
    for note in report.notes if report is not None else ():
        err.print(f"normscope: note: {printable(note)}")
    if run_summary.nonfinite:
        from normscope.report.terminal.analyze_view import NONFINITE_SHOWN, more_nonfinite  # lazy: numpy and pandas

        for finding in run_summary.nonfinite[:NONFINITE_SHOWN]:
            err.print(f"normscope: warning: {printable(finding.param)} holds {finding.count} non-finite value(s) "
                      f"from snapshot {finding.snapshot} on", style="bold red")
        if more := more_nonfinite(run_summary):
            err.print(f"normscope: warning: {more}", style="bold red")

    if format is Format.table:
        from normscope.report.terminal.analyze_view import analyze_view  # lazy: numpy and pandas

        view = analyze_view(traj, result, max_rows=rows, notes=False)
        if output is None:
            stdout_console().print(view)
        else:
            emit_text(render_to_text(view), output)
    elif format is Format.json:
        from normscope.report.analyze_json import analyze_document  # lazy: numpy and pandas

        doc = analyze_document(traj, result)
        emit_text(json_text(doc) + "\n", output)
    elif format is Format.csv:
        from normscope.report.table_export import to_csv_text  # lazy: pandas

        emit_text(to_csv_text(traj.table), output)
    else:
        from normscope.report.table_export import write_parquet  # lazy: pandas and pyarrow

        assert output is not None
        write_parquet(traj.table, output)
