"""The `normscope` command: a thin typer shell over the library.

Nothing here imports torch at module level: `normscope --help` must stay fast. Each command lives in
its own module and imports the heavy parts of the library inside its body.
"""

from __future__ import annotations

import atexit
import gc
import logging
import sys

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

try:  # a typer that carries its own copy of click raises that copy's exceptions
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - a typer on the real click
    from click import exceptions as click_errors

from normscope._gc import collector_paused
from normscope.cli import analyze as _analyze
from normscope.cli import check as _check
from normscope.cli import recommend as _recommend
from normscope.cli import report as _report
from normscope.cli import watch as _watch
from normscope.errors import EXIT_BAD_INPUT
from normscope.report.escape import printable

def _plain_flags(params) -> None:
    """A flag takes no value, so its help shows no `<bool>`; an argument shows its name (`PATH`)."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
        elif isinstance(param, TyperArgument) and param.metavar is None:
            param.metavar = param.name.upper()


class _Command(TyperCommand):
    def get_params(self, ctx):
        params = super().get_params(ctx)
        _plain_flags(params)
        return params

    def collect_usage_pieces(self, ctx):
        # `PATH`, not `{path}`: the argument as the help's argument panel names it
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or param.name.upper()
                pieces.append(name if param.required else f"[{name}]")
        return pieces


class _Group(TyperGroup):
    def get_params(self, ctx):
        params = super().get_params(ctx)
        _plain_flags(params)
        return params


app = typer.Typer(
    cls=_Group,
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
        from normscope.environment import describe  # lazy: its imports cost ~75 ms; for --version only

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
        # at exit: "torch files read by torch.load: N of M (reasons: …)"
        atexit.register(lambda: getattr(sys.modules.get("normscope.sources._torchio"), "log_fallbacks", str)())


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


app.command("analyze", cls=_Command)(_analyze.analyze)
app.command("recommend", cls=_Command)(_recommend.recommend)
app.command("check", cls=_Command)(_check.check)
app.command("report", cls=_Command)(_report.report)
app.command("watch", cls=_Command)(_watch.watch)


def main() -> None:
    """Run the command line. A usage mistake (an unknown flag, a missing argument, a bad value) is one
    line on stderr and exit 2, like every other bad input."""
    # A command is one short process: the collector's passes over what its imports and its run
    # build (objects that live until exit, no cycles worth collecting) took 90 ms of a 1.3 s
    # `analyze` of the sample run and 150 ms of one of a 1 GB run, docs/benchmarks.md. Paused for
    # the command; `watch`, which runs on, resumes it for its refresh loop.
    with collector_paused():
        try:
            code = _run_command()
        finally:
            # The interpreter's last collections at exit walk every object the process still
            # holds (the libraries imported, the table, the result): 0.2 s of a 1.1 s command on
            # a slow machine, docs/benchmarks.md. Frozen before the collector is on again, those
            # objects are left out of them and of the first collection after the pause; atexit
            # handlers still run, the streams are still flushed and closed, and what no
            # reference cycle holds is still freed.
            gc.freeze()
    sys.exit(code or 0)


def _run_command() -> int | None:
    """The command's exit code; a usage mistake or an interruption said on stderr, as `main` says."""
    try:
        return app(prog_name="normscope", standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:
        exc.ctx.command.get_help(exc.ctx)  # typer's rich help prints itself
        return EXIT_BAD_INPUT
    except click_errors.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "normscope"
        print(f"normscope: error: {printable(exc.format_message())} (see '{printable(where)} --help')",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    except click_errors.ClickException as exc:
        print(f"normscope: error: {printable(exc.format_message())}", file=sys.stderr)
        return exc.exit_code
    except typer.Abort:
        print("normscope: interrupted", file=sys.stderr)
        return 130


__all__ = ["app", "main"]
