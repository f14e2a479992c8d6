"""Recovering the tensors of a `torch.save` zip that `weights_only` refuses, without running code.

Opt-in (`open_run(..., recover_unsafe=True)`). The pickle is read by an unpickler whose `find_class`
returns torch's tensor-rebuild functions, `OrderedDict`, `set`, `torch.Size` and dtypes, and for any
other global an *inert placeholder class* that only records its arguments and state. So a pickled
`nn.Module` becomes a tree of placeholders whose recorded `_parameters`/`_buffers`/`_modules` give
the state_dict back, an `argparse.Namespace` becomes a placeholder that is ignored, and a
`__reduce__` that names `os.system` gets a placeholder instead of the function. TorchScript archives
are refused (torch.load would hand them to `torch.jit.load`). Legacy non-zip files are not handled.
"""

from __future__ import annotations

import pickle
import types
import warnings
import zipfile
from collections import OrderedDict
from typing import Any, ClassVar

from normscope.errors import BadInputError, UnsafeCheckpointError

_ALLOWED_CALLABLES = {
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("torch", "Size"),
}


class Inert:
    """Stands in for a class or function the checkpoint names; records, never runs anything."""

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Inert:  # noqa: PYI034
        obj = object.__new__(cls)
        obj.__dict__.update(args=args, state=None, items={}, list_items=[])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.list_items.append(value)

    def extend(self, values: Any) -> None:
        self.list_items.extend(values)

    def __call__(self, *args: Any, **kwargs: Any) -> Inert:
        return type(self)(*args)

    def __repr__(self) -> str:
        return f"<not loaded: {self.global_name}>"


def _inert_class(global_name: str) -> type[Inert]:
    return type("Inert", (Inert,), {"global_name": global_name})


class _RestrictedUnpickler(pickle.Unpickler):
    refused: ClassVar[set[str]]  # set per load by `_pickle_module`

    def find_class(self, module: str, name: str) -> Any:
        import torch

        module = (
            "builtins" if module == "__builtin__" else module
        )  # protocol-2 spelling
        if (module, name) in _ALLOWED_CALLABLES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        self.refused.add(f"{module}.{name}")
        return _inert_class(f"{module}.{name}")


def _pickle_module(refused: set[str]) -> types.ModuleType:
    """A stand-in `pickle` module for torch.load: our Unpickler, reporting refused globals."""
    unpickler = type("Unpickler", (_RestrictedUnpickler,), {"refused": refused})
    module = types.ModuleType("normscope_restricted_pickle")
    module.Unpickler = unpickler  # type: ignore[attr-defined]
    module.__name__ = "normscope_restricted_pickle"
    return module


# Entries of the state dicts rebuilt from pickled modules, and containers walked, at most: a
# pickle can share one object many times over (a DAG), and a walk along every path through it
# is exponential in its depth. Real checkpoints are far below this.
_MAX_VISITS = 1 << 20


class _Budget:
    def __init__(self) -> None:
        self.left = _MAX_VISITS

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise BadInputError("its objects are shared so often that reading them would not end "
                                "(a crafted file?)")  # fmt: skip


def _module_state_dict(module: Inert, budget: _Budget, prefix: str = "") -> OrderedDict[str, Any]:
    import torch

    budget.spend()
    out: OrderedDict[str, Any] = OrderedDict()
    state = module.state if isinstance(module.state, dict) else {}
    non_persistent = state.get("_non_persistent_buffers_set")
    skip = non_persistent if isinstance(non_persistent, (set, frozenset)) else set()
    for key in ("_parameters", "_buffers"):
        found = state.get(key)
        for name, value in (found.items() if isinstance(found, dict) else ()):
            if isinstance(value, torch.Tensor) and name not in skip:
                budget.spend()
                out[f"{prefix}{name}"] = value
    children = state.get("_modules")
    for name, child in (children.items() if isinstance(children, dict) else ()):
        if isinstance(child, Inert):
            out.update(_module_state_dict(child, budget, f"{prefix}{name}."))
    return out


def _is_module(value: Any) -> bool:
    return (
        isinstance(value, Inert)
        and isinstance(value.state, dict)
        and "_parameters" in value.state
    )


def plain(obj: Any, budget: _Budget | None = None, done: dict[int, Any] | None = None) -> Any:
    """Pickled modules (placeholders) replaced by their state_dicts, containers walked; each
    container once (`done`, by identity: what the pickle shared stays shared)."""
    budget = budget or _Budget()
    done = {} if done is None else done
    if not (_is_module(obj) or isinstance(obj, (dict, list, tuple))):
        return obj
    if id(obj) in done:
        return done[id(obj)]
    budget.spend()
    if _is_module(obj):
        out: Any = _module_state_dict(obj, budget)
    elif isinstance(obj, dict):
        out = {k: plain(v, budget, done) for k, v in obj.items()}
    else:
        out = [plain(v, budget, done) for v in obj]
    done[id(obj)] = out
    return out


def load_torch_zip_restricted(path: str) -> tuple[Any, list[str]]:
    """The checkpoint with every non-allowed object as an inert placeholder, and those globals."""
    import torch

    with zipfile.ZipFile(path) as zf:
        if any(n.endswith("constants.pkl") for n in zf.namelist()):
            raise UnsafeCheckpointError(
                f"{path} is a TorchScript archive; normscope does not load code"
            )
    refused: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = torch.load(
            path,
            weights_only=False,
            pickle_module=_pickle_module(refused),
            mmap=True,
            map_location="cpu",
        )
    return plain(obj), sorted(refused)
