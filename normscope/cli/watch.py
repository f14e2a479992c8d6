"""`normscope watch PATH`: a live terminal view of a run as it trains."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from normscope._gc import collector_resumed
from normscope.cli._common import (
    ConfigOpt,
    DeviceOpt,
    ExcludeOpt,
    IncludeOpt,
    OneFilePerEpochOpt,
    StepsPerEpochOpt,
    TagPatternOpt,
    handle_errors,
    reading_options,
    stderr_console,
    stdout_console,
)
from normscope.report.escape import printable

PathArg = Annotated[
    Path,
    typer.Argument(help="A tracker log (.jsonl), a TensorBoard log dir, or a checkpoint directory.",
                   show_default=False, readable=False),
]
IntervalOpt = Annotated[float, typer.Option(help="Seconds between refreshes.", min=0.05)]
OnceOpt = Annotated[bool, typer.Option("--once", help="Print one frame on stdout and exit.")]
RecentOpt = Annotated[int, typer.Option(help="Average cos(w,g) and angles over this many records.",
                                        min=1)]
BudgetOpt = Annotated[
    int | None,
    typer.Option("--total-epochs", help="The run's epoch budget, for ABEL's final decay (default: "
                 "the epochs so far).", min=1, show_default=False),
]
def frame_maker(source, options, *, warnings: bool = True):
    """The function that turns the source's latest trajectory into the rendered frame: the live
    state of `analyze_run` under `options` (a `RunOptions`), with the run's warnings at its foot
    unless `warnings` is false. It keeps a `LiveView`, so a growing tracker log's new records are
    taken in rather than the whole run analysed again at each refresh."""
    # lazy: pandas and rich's tables, on the first frame; `normscope --help` imports this module
    from normscope.live.render import render_frame
    from normscope.live.view import LiveView

    view = LiveView(options)

    def frame(trajectory):
        stamp = time.strftime("refreshed %H:%M:%S")
        if source.last_error:
            stamp += f" · last read failed: {source.last_error}"
        return render_frame(view.frame(trajectory), updated=stamp, warnings=warnings)

    return frame


@handle_errors
def watch(path: PathArg, interval: IntervalOpt = 2.0, once: OnceOpt = False,
          recent: RecentOpt = 5, total_epochs: BudgetOpt = None,
          steps_per_epoch: StepsPerEpochOpt = None, one_file_per_epoch: OneFilePerEpochOpt = False,
          tag_pattern: TagPatternOpt = None, include: IncludeOpt = None, exclude: ExcludeOpt = None,
          device: DeviceOpt = None, config: ConfigOpt = None) -> None:
    """Follow a training run live: per-layer norms, gradients, angular update vs equilibrium."""
    # lazy: the analyses and the readers, when watch runs; `normscope --help` imports this module
    from normscope.analysis.runner import RunOptions
    from normscope.live.source import LiveSource

    # the parameters and device of the other commands; a live view shows every snapshot, so the
    # config's `every` is not its key
    reading_keys = {**reading_options(path, config, include, exclude, None, device), "every": 1}
    options = RunOptions(**reading_keys, total_epochs=total_epochs, steps_per_epoch=steps_per_epoch,
                         one_file_per_epoch=one_file_per_epoch, probe=False, recent=recent)
    source = LiveSource(path, tag_pattern=tag_pattern, one_file_per_epoch=one_file_per_epoch,
                        include=options.include, exclude=options.exclude, device=options.device)
    frame = frame_maker(source, options, warnings=not once)
    trajectory = source.poll()
    if once:  # the frame on stdout, the run's warnings on stderr as every command prints them
        stdout_console().print(frame(trajectory))
        for warning in trajectory.warnings if trajectory is not None else ():
            stderr_console().print(f"normscope: warning: {printable(warning)}")
        return

    from rich.live import Live  # lazy: only a live view on a terminal needs it

    # the command line pauses the collector for a command (`cli.main`); a watch runs on
    collector_resumed()
    console = stderr_console(soft_wrap=False)
    try:
        if not console.is_terminal:  # a pipe or file: append a frame whenever new data arrives
            console.print(frame(trajectory))
            while True:
                time.sleep(interval)
                fresh = source.poll()
                if fresh is not None:
                    trajectory = fresh
                    console.print(frame(trajectory))
        with Live(frame(trajectory), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                fresh = source.poll()
                if fresh is not None:
                    trajectory = fresh
                live.update(frame(trajectory), refresh=True)
    except KeyboardInterrupt:
        return  # Ctrl-C is how a watch ends: exit 0, no traceback
