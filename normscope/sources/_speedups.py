"""The torch.save zip reader's C loops (`_torchzip.c`), where the install has them.

An optional extension, as the engine's fused kernel is: built with the package where a C
compiler is (setup.py). Each of its functions reads the common case only and answers None for
anything else, so its callers (`_zipdir`, `_fast_torch_zip`) run their Python code whenever it
is missing, declines, or is switched off — with the same results, more slowly.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType
from typing import NamedTuple

from normscope._native import untrusted

MODULE = "normscope.sources._torchzip"
ABI = 1  # `TORCHZIP_ABI` in _torchzip.c
# Set to 1, the reader runs its Python loops (to compare the two, or to rule the C ones out).
DISABLE_VARIABLE = "NORMSCOPE_NO_C_READER"


class ReaderStatus(NamedTuple):
    active: bool
    detail: str  # for `normscope --version`


def _load() -> tuple[ModuleType | None, ReaderStatus]:
    if os.environ.get(DISABLE_VARIABLE, "") not in ("", "0"):
        return None, ReaderStatus(False, f"off ({DISABLE_VARIABLE} is set)")
    try:
        spec = importlib.util.find_spec(MODULE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        return None, ReaderStatus(False, "not built into this install (its Python loops are used)")
    refused = untrusted(spec.origin)
    if refused is not None:
        return None, ReaderStatus(False, f"not loaded: {refused}")
    try:
        module = importlib.import_module(MODULE)
    except ImportError as exc:
        return None, ReaderStatus(False, f"cannot be loaded ({exc})")
    if getattr(module, "ABI", None) != ABI:
        return None, ReaderStatus(False, "built from another version of normscope; reinstall it")
    return module, ReaderStatus(True, f"active ({spec.origin})")


# The module or None, decided once at import: callers read `speedups.torchzip` at each call, so
# a test can switch it off with monkeypatch.
torchzip, status = _load()
