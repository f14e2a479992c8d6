"""Walking a directory tree the user pointed at, safe for hostile trees: checkpoint sources and
`watch`'s fingerprint of a checkpoint directory use it."""

from __future__ import annotations

import os
from collections.abc import Iterator


def walk(root: str | os.PathLike[str]) -> Iterator[os.DirEntry[str]]:
    """Every entry under `root`, depth first, without following symlinked directories.

    A loop with its own stack: `Path.rglob` and `os.walk` recurse once per level and raise
    RecursionError in a directory tree a thousand levels deep.
    """
    stack = [os.fspath(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                found = sorted(entries, key=lambda e: e.name)
        except OSError:  # unreadable, or removed while we looked
            continue
        for entry in found:
            yield entry
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
            except OSError:
                continue
