"""Listing what the user pointed at, with one-line errors for paths that cannot be read."""

from __future__ import annotations

import os

from normscope.errors import BadInputError


def check_exists(path: str) -> None:
    if not os.path.exists(path):
        raise BadInputError(f"{path} does not exist")


def list_dir(path: str) -> list[str]:
    """Entries of a directory (full paths, name order, hidden files left out)."""
    try:
        names = sorted(os.listdir(path))
    except PermissionError:
        raise BadInputError(
            f"cannot read directory {path}: permission denied"
        ) from None
    except OSError as exc:
        raise BadInputError(
            f"cannot read directory {path}: {exc.strerror or exc}"
        ) from None
    return [os.path.join(path, n) for n in names if not n.startswith(".")]


def files_in(path: str) -> list[str]:
    return [p for p in list_dir(path) if os.path.isfile(p)]


def subdirs_in(path: str) -> list[str]:
    return [p for p in list_dir(path) if os.path.isdir(p)]


def label_of(path: str, root: str) -> str:
    """The name a user knows a checkpoint by: its path relative to the run root (or its base name)."""
    rel = os.path.relpath(path, root)
    return os.path.basename(path) if rel == "." else rel


def inside(directory: str, relative: str, where: str) -> str:
    """`directory/relative`, refusing names (from an index or metadata file) that escape it."""
    if "\0" in relative:  # no file has such a name; realpath would raise ValueError
        raise BadInputError(f"{where} names a file with a NUL byte in its name: {relative!r}")
    base = os.path.realpath(directory)
    path = os.path.realpath(os.path.join(directory, relative))
    if os.path.commonpath([base, path]) != base:
        raise BadInputError(f"{where} points outside its directory: {relative}")
    return os.path.join(directory, relative)


