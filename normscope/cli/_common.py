"""What every command shares: the stderr console, and turning errors into one line and an exit code."""

from __future__ import annotations

import enum
import functools
import io
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from normscope.analysis.user_model import MODEL_OPTION_HELP
from normscope.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, BadInputError, NormscopeError
from normscope.report.escape import printable
from normscope.report.terminal.safe_console import SafeConsole
from normscope.run_files import run_data_in

F = TypeVar("F", bound=Callable[..., Any])


class Device(str, enum.Enum):
    """Where tensors are reduced: `auto` takes CUDA when present, else the CPU."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Granularity(str, enum.Enum):
    """What the engine reduces: each tensor, or also each of its rows (output neurons)."""

    tensor = "tensor"
    row = "row"


GRANULARITY_HELP = ("row: also per-neuron (per output row) angles and norms from the same pass, summarised per "
                    "tensor against the rotational-equilibrium prediction (checkpoints only).")


# The epoch flags every command that needs epochs takes, with the same names and meaning.
STEPS_PER_EPOCH_HELP = "Group snapshots into epochs by step ÷ this, instead of the recorded epoch."
ONE_FILE_PER_EPOCH_HELP = ("Each checkpoint file is one epoch: number them 1..N in the run's time order "
                           "(for checkpoints that record no step or epoch; a note says which order).")
StepsPerEpochOpt = Annotated[float | None, typer.Option("--steps-per-epoch", help=STEPS_PER_EPOCH_HELP,
                                                        show_default=False)]
OneFilePerEpochOpt = Annotated[bool, typer.Option("--one-file-per-epoch", help=ONE_FILE_PER_EPOCH_HELP)]

# The options that choose what of a run is read, shared by the commands that read a run. Those
# the config file also sets (`[tool.normscope]`: include, exclude, every, device) are None when
# not given, so the file (and NORMSCOPE_* variables) can fill them: `reading_options`.
IncludeOpt = Annotated[
    list[str] | None,
    typer.Option("--include", help="Only parameters matching this glob (repeatable).", show_default=False),
]
ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option("--exclude", help="Drop parameters matching this glob (repeatable).", show_default=False),
]
EveryOpt = Annotated[
    int | None,
    typer.Option("--every", help="Keep every N-th snapshot (the last is always kept; default 1).", min=1,
                 show_default=False),
]
DeviceOpt = Annotated[
    Device | None,
    typer.Option("--device", help="Where to reduce tensors (default auto: CUDA if present).", show_default=False),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="Config file (default: nearest normscope.toml or pyproject.toml "
                 "\\[tool.normscope], searching upward).", show_default=False, readable=False),
]
RecoverOpt = Annotated[
    bool,
    typer.Option(help="Read tensors from torch files that hold other objects (e.g. argparse.Namespace) "
                      "through a restricted unpickler that runs nothing; refused by default."),
]
TagPatternOpt = Annotated[
    str | None,
    typer.Option("--tag-pattern", help="TensorBoard: regex for per-layer norm tags, with a named group "
                 "(?P<param>...) (and optionally (?P<stat>weight|grad)).", show_default=False),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(help=MODEL_OPTION_HELP, show_default=False),
]


def reading_flags(include: list[str] | None, exclude: list[str] | None, every: int | None,
                  device: Device | None) -> dict[str, Any]:  # fmt: skip
    """The reading options given on the command line, under their config keys (None: not given)."""
    return {"include": tuple(include) if include else None, "exclude": tuple(exclude) if exclude else None,
            "every": every, "device": device.value if device is not None else None}


def reading_options(path: Path, config_file: Path | None, include: list[str] | None, exclude: list[str] | None,
                    every: int | None, device: Device | None) -> dict[str, Any]:  # fmt: skip
    """The `RunOptions` reading fields a command reads `path` with: its flags, then NORMSCOPE_*
    variables, then the config file (`--config`, else the nearest one above the run or the current
    directory), then the defaults: every command that reads a run reads it the same way."""
    from normscope.config import load_config  # lazy: tomllib and the schema, once a run is read

    flags = reading_flags(include, exclude, every, device)
    return load_config(path, config_file=config_file, flags=flags).config.reading()


def stderr_console(soft_wrap: bool = True) -> SafeConsole:
    """Console for notes and warnings on stderr: a long line is one line (the terminal wraps it);
    `soft_wrap=False` for a view that rich lays out (`watch`'s live frame), so its lines wrap, not crop."""
    return SafeConsole(stderr=True, soft_wrap=soft_wrap)


def stdout_console() -> SafeConsole:
    """Console for reports on stdout: as wide as the terminal, or as COLUMNS says. Piped output with
    no COLUMNS gets a wide page instead of rich's 80 columns, so tables stay one row per line in logs."""
    console = SafeConsole()
    if not console.is_terminal and not os.environ.get("COLUMNS", "").strip().isdigit():
        console = SafeConsole(width=max(console.width, 160))
    return console


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    """Print one line on stderr and return the Exit to raise. The message often quotes a name from
    the run, so it is printed escaped."""
    print(f"normscope: error: {printable(message)}", file=sys.stderr)
    return typer.Exit(code)


# The libraries normscope imports, by import name, with what pip installs them as (an optional one
# through its extra, as the readers that need one say): one that is missing or broken is the
# environment's to fix, not a bug of normscope's.
_PACKAGES = {
    "torch": "torch", "safetensors": "safetensors", "typer": "typer", "rich": "rich", "pandas": "pandas",
    "numpy": "numpy", "matplotlib": "matplotlib", "pyarrow": "'normscope[parquet]'",
    "tensorboard": "'normscope[tensorboard]'", "dask": "'normscope[dask]'", "distributed": "'normscope[dask]'",
    "transformers": "'normscope[hf]'", "accelerate": "'normscope[hf]'",
    "pytorch_lightning": "'normscope[lightning]'", "lightning": "'normscope[lightning]'",
}


def _missing_package(exc: BaseException) -> tuple[str, str] | None:
    """(import name, pip name) of the library whose import failed, where `exc` is that failure."""
    if not isinstance(exc, ImportError) or not exc.name:
        return None
    top = exc.name.split(".")[0]
    return (top, _PACKAGES[top]) if top in _PACKAGES else None


def handle_errors(func: F) -> F:
    """Wrap a command so user errors print one line and exit with their code, never a traceback.

    Set NORMSCOPE_DEBUG=1 to let internal errors raise with their traceback.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except NormscopeError as exc:
            raise fail(exc.message, exc.exit_code) from None
        except KeyboardInterrupt:
            print("normscope: interrupted", file=sys.stderr)
            raise typer.Exit(130) from None
        except BrokenPipeError:
            raise typer.Exit(0) from None
        except Exception as exc:
            if os.environ.get("NORMSCOPE_DEBUG"):
                raise
            missing = _missing_package(exc)
            if missing:
                raise fail(f"this command needs {missing[0]}, which cannot be imported here: {exc} "
                           f"(pip install {missing[1]})", EXIT_BAD_INPUT) from None
            raise fail(
                f"internal error: {type(exc).__name__}: {exc} "
                "(a bug in normscope; rerun with NORMSCOPE_DEBUG=1 for the traceback)",
                EXIT_INTERNAL,
            ) from None

    return wrapper  # type: ignore[return-value]


def progress_reporter():
    """A rich progress bar on stderr (hidden when stderr is not a terminal) and its callback."""
    from rich.progress import (  # lazy: 17 ms of imports that `--help` and the JSON outputs do not need
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = stderr_console()
    progress = Progress(
        TextColumn("{task.description}", style="progress.description", markup=False), BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(), TimeRemainingColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    )
    task = progress.add_task("reading tensors", total=None)

    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    return progress, update


def check_output_path(path: Path | None, flag: str = "--output") -> None:
    """Refuse an output path that cannot be written, before any checkpoint is read: its directory
    must exist and be writable, and the path must not be a directory."""
    if path is None:
        return
    if path.is_dir():
        raise BadInputError(f"{flag} {path} is a directory; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise BadInputError(f"{flag} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInputError(f"{flag} {path}: directory {parent} is not writable")
    held = run_data_in(path)
    if held:
        raise BadInputError(f"{flag} {path} holds {held}; normscope never writes over a run's files, "
                            "so give the output another name")


def emit_text(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise BadInputError(f"cannot write {output}: {exc.strerror or exc}") from None


def render_to_text(renderable, width: int = 160) -> str:
    """Plain text of a rich renderable, for `-o FILE` with the table format."""
    buffer = io.StringIO()
    SafeConsole(file=buffer, width=width, color_system=None, soft_wrap=False).print(renderable)
    return buffer.getvalue()
