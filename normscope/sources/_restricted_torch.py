"""Recovering the tensors of a `torch.save` zip that weights_only refuses, without running code.

Opt-in (`open_run(..., recover_unsafe=True)`). The pickle is read by the one restricted unpickler
(`_unpickle`) under `_fast_torch_zip`'s tensor policy, widened: every other global becomes an
*inert placeholder class* that only records its arguments and state. So a pickled `nn.Module`
becomes a tree of placeholders whose recorded `_parameters`/`_buffers`/`_modules` give the
state_dict back, an `argparse.Namespace` becomes a placeholder that is ignored, and a
`__reduce__` that names `os.system` gets a placeholder instead of the function. TorchScript
archives are refused before this (`_torchio`); legacy non-zip files, and archives the fast reader
does not map (`_zipdir`), are not recovered.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

from normscope._gc import collector_paused
from normscope.errors import BadInputError

from ._fast_torch_zip import Rebuilt, open_archive, resolve_places, torch_policy
from ._unpickle import Declined, Reason, unpickle


class Inert:
    """Stands in for a class or function the checkpoint names; records, never runs anything."""

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Inert:  # noqa: PYI034
        obj = object.__new__(cls)
        obj.__dict__.update(args=args, state=None, items={}, list_items=[])
        return obj

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


# Entries of the state dicts rebuilt from pickled modules, and containers walked, at most: a
# pickle can share one object many times over (a DAG), and a walk along every path through it
# is exponential in its depth. Real checkpoints are far below this.
_MAX_VISITS = 1 << 20


class _Budget:
    left = _MAX_VISITS

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise BadInputError("its objects are shared so often that reading them would not end (a crafted file?)")


def _module_state_dict(module: Inert, budget: _Budget, prefix: str = "") -> OrderedDict[str, Any]:
    budget.spend()
    out: OrderedDict[str, Any] = OrderedDict()
    state = module.state if isinstance(module.state, dict) else {}
    non_persistent = state.get("_non_persistent_buffers_set")
    skip = non_persistent if isinstance(non_persistent, (set, frozenset)) else set()
    for key in ("_parameters", "_buffers"):
        found = state.get(key)
        for name, value in (found.items() if isinstance(found, dict) else ()):
            if type(value) is Rebuilt and name not in skip:
                budget.spend()
                out[f"{prefix}{name}"] = value
    children = state.get("_modules")
    for name, child in (children.items() if isinstance(children, dict) else ()):
        if isinstance(child, Inert):
            out.update(_module_state_dict(child, budget, f"{prefix}{name}."))
    return out


def _is_module(value: Any) -> bool:
    return isinstance(value, Inert) and isinstance(value.state, dict) and "_parameters" in value.state


def plain(obj: Any, budget: _Budget | None = None, done: dict[int, Any] | None = None) -> Any:
    """Pickled modules (placeholders) replaced by their state_dicts, containers walked; each
    container once (`done`, by identity: what the pickle shared stays shared)."""
    budget = budget or _Budget()
    done = {} if done is None else done
    if type(obj) is Rebuilt or not (_is_module(obj) or isinstance(obj, (dict, list, tuple))):
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
    """The checkpoint with every global outside the torch policy as an inert placeholder.

    Returns:
        (the object, pickled modules as their state_dicts; the globals left inert, sorted).

    Raises:
        Declined: an archive the fast reader does not map, or tensors it does not build.
        BadInputError: an object graph shared too often to walk.
    """
    pickled, records = open_archive(path, any_protocol=True)
    refused: set[str] = set()

    def inert(module: str, name: str) -> type[Inert]:
        module = "builtins" if module == "__builtin__" else module  # protocol 2's spelling
        refused.add(f"{module}.{name}")
        return _inert_class(f"{module}.{name}")

    policy = torch_policy(torch_dtypes=True)
    rebuild_parameter = policy.globals[("torch._utils", "_rebuild_parameter")]

    def make_frozenset(items: Any = ()) -> frozenset[Any]:
        if type(items) not in (list, tuple):
            raise Declined(Reason.ARGUMENTS, "frozenset of something other than a list")
        return frozenset(items)

    extras = {  # what torch.save writes for modules beside tensors and containers
        ("builtins", "frozenset"): make_frozenset,
        ("__builtin__", "frozenset"): make_frozenset,
        ("torch._utils", "_rebuild_parameter_with_state"):
            lambda data, requires_grad, hooks, state: rebuild_parameter(data, requires_grad, hooks),
    }  # fmt: skip
    policy = dataclasses.replace(policy, globals={**policy.globals, **extras}, unknown=inert)
    with collector_paused():
        obj = plain(unpickle(pickled, policy))
        return resolve_places(obj, records, refs=False), sorted(refused)
