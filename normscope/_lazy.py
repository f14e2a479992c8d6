"""PEP 562 attributes for a package whose public names are defined in its submodules: the
submodule is imported when a name is first asked for, so `import normscope` stays fast and does
not import torch, pandas or a framework until something that needs them is used."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


_GetAttr = Callable[[str], Any]
_Dir = Callable[[], list[str]]


def lazy_attributes(package: str, names: Mapping[str, str], namespace: Mapping[str, Any]) -> tuple[_GetAttr, _Dir]:
    """The package's `__getattr__` and `__dir__`: `names` maps each public name to the module that
    defines it; `namespace` is the package's `globals()` (what it defines itself)."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:
        return sorted({*namespace, *names})

    return __getattr__, __dir__
