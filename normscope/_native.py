"""Whether a native module normscope ships may be loaded: the one check both of its optional C
extensions (the engine's fused kernel, the torch.save reader's loops) pass before import."""

from __future__ import annotations

import os
import stat


def untrusted(path: str) -> str | None:
    """Why a file, or the directory it is in, may hold code someone else put there (None: it
    cannot). Python imports whatever lies on its path; for native code normscope also asks that
    the file and its directory are owned by this user or by root and not writable by others."""
    if not hasattr(os, "getuid"):
        return None
    for target in (path, os.path.dirname(path)):
        try:
            st = os.stat(target)
        except OSError as exc:
            return f"cannot check {target}: {exc.strerror}"
        if st.st_uid not in (os.getuid(), 0):
            return f"{target} belongs to another user"
        if st.st_mode & stat.S_IWOTH:
            return f"{target} is writable by other users"
    return None
