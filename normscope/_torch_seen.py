"""torch, for code that must not import it: no value is a torch tensor until torch is imported.

A run whose tensors the fused CPU kernel reads in place (a `torch.save` zip, safetensors) needs no
torch at all, and importing it costs more than the rest of `normscope analyze` on a small run.
Code that tells tensors from other values, or honours torch's settings, asks here instead.
"""

from __future__ import annotations

import sys
from types import ModuleType


class _NoTensor:
    """What no value is an instance of: torch.Tensor where torch is not imported."""


def imported_torch() -> ModuleType | None:
    """The torch module where it is imported (all of it: not while another thread imports it)."""
    torch = sys.modules.get("torch")
    if torch is None or getattr(getattr(torch, "__spec__", None), "_initializing", False):
        return None
    return torch


def tensor_type() -> type:
    """torch.Tensor where torch is imported; otherwise a class nothing is an instance of."""
    torch = imported_torch()
    return _NoTensor if torch is None else torch.Tensor
