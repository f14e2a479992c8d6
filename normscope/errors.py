"""Errors the user can act on, each with the exit code the CLI returns for it.

Exit codes (documented in the README, same as ruff's convention):
    0   ok
    1   `normscope check` found violations
    2   bad input, usage or configuration
    101 internal error (a bug in normscope)
    130 interrupted (Ctrl-C)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_VIOLATIONS = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 101


class NormscopeError(Exception):
    """An error with a one-line message meant for the user; the CLI prints it and exits."""

    exit_code: int = EXIT_BAD_INPUT

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class BadInputError(NormscopeError):
    """The path the user gave cannot be read as a training run (empty, corrupt, unknown, unsafe)."""


class UnsafeCheckpointError(BadInputError):
    """A checkpoint needs code to be run to load it; normscope refuses."""


class ConfigError(NormscopeError):
    """A configuration file or flag is invalid (unknown key, wrong type)."""
