"""What every command shares: the stderr console, and turning errors into one line and an exit code."""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, TypeVar

import typer
from rich.console import Console

from normscope.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, NormscopeError

F = TypeVar("F", bound=Callable[..., Any])


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def stdout_console() -> Console:
    """Console for reports on stdout. Piped output gets a wide page instead of rich's 80 columns,
    so tables stay one row per line in logs and files."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=max(console.width, 160))
    return console


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    """Print one line on stderr and return the Exit to raise."""
    print(f"normscope: error: {message}", file=sys.stderr)
    return typer.Exit(code)


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
        except Exception as exc:  # noqa: BLE001 - the last line of defence for the user
            if os.environ.get("NORMSCOPE_DEBUG"):
                raise
            raise fail(
                f"internal error: {type(exc).__name__}: {exc} "
                "(a bug in normscope; rerun with NORMSCOPE_DEBUG=1 for the traceback)",
                EXIT_INTERNAL,
            ) from None

    return wrapper  # type: ignore[return-value]
