"""The `normscope` command: a thin typer shell over the library.

Nothing here imports torch at module level: `normscope --help` must stay fast. Each command lives in
its own module and imports the heavy parts of the library inside its body.
"""

from __future__ import annotations

import logging
import sys

import typer

from normscope.cli import analyze as _analyze
from normscope.cli import check as _check
from normscope.cli import recommend as _recommend
from normscope.cli import report as _report
from normscope.cli import watch as _watch

app = typer.Typer(
    name="normscope",
    help="Weight-dynamics analysis of training runs: norm trajectories, bounces, scale invariance, "
    "equilibrium, and when to decay the learning rate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _print_version(value: bool) -> None:
    if value:
        from normscope.environment import describe

        lines = describe()
        width = max(len(label) for label, _ in lines)
        for label, text in lines:
            typer.echo(f"{label + ':':<{width + 1}} {text}")
        raise typer.Exit()


def _verbose(value: bool) -> None:
    """Send normscope's own notes (e.g. that a run uses the torch kernels) to stderr."""
    if value:
        logger = logging.getLogger("normscope")
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("normscope: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True,
        help="Print normscope's, Python's and torch's versions, CUDA, whether the fused CPU "
             "kernel is active and which extras are installed, then exit."),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", callback=_verbose, is_eager=True,
        help="Say on stderr how the run is done (e.g. when it falls back to the torch kernels)."),
) -> None:
    """Weight-dynamics analysis of training runs."""


app.command("analyze")(_analyze.analyze)
app.command("recommend")(_recommend.recommend)
app.command("check")(_check.check)
app.command("report")(_report.report)
app.command("watch")(_watch.watch)


def main() -> None:
    app()


__all__ = ["app", "main"]
