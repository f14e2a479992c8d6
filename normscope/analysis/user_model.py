"""Build the user's model from `--model package.module:factory` for the exact invariance analysis.

This imports and runs the user's code. That is the user's explicit choice (they named the factory);
normscope never does it on its own, and the CLI help says so (`MODEL_OPTION_HELP`).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING

from normscope.errors import BadInputError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

MODEL_OPTION_HELP = (
    "Model factory 'package.module:function' (called with no arguments) for the exact scale-invariance "
    "analysis (torch.fx + numerical probe), and for the parameter order of optimizer state saved beside "
    "safetensors weights. This IMPORTS AND RUNS that code: name only code you trust. "
    "The current directory is searched first."
)


def parse_model_spec(spec: str) -> tuple[str, str]:
    module, sep, attr = spec.strip().partition(":")
    if not sep or not module or not attr or not all(p.isidentifier() for p in module.split(".") + attr.split(".")):
        raise BadInputError(f"--model must look like 'package.module:factory', got {spec!r}")
    return module, attr


def build_model(spec: str) -> nn.Module:
    """Import `package.module`, call `factory()` and check that it returned a torch.nn.Module."""
    from torch import nn  # lazy: torch is heavy, and only a --model needs it

    module_name, attr = parse_model_spec(spec)
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - whatever the user's import raises, one line
            raise BadInputError(f"cannot import {module_name!r} for --model: {type(exc).__name__}: {_first_line(exc)}") from None
        factory = module
        for part in attr.split("."):
            factory = getattr(factory, part, None)
            if factory is None:
                raise BadInputError(f"--model: {module_name!r} has no attribute {attr!r}")
        if not callable(factory):
            raise BadInputError(f"--model: {spec!r} is not callable")
        try:
            model = factory()
        except Exception as exc:  # noqa: BLE001
            raise BadInputError(f"--model: {spec}() failed: {type(exc).__name__}: {_first_line(exc)}") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    if not isinstance(model, nn.Module):
        raise BadInputError(f"--model: {spec}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def parameter_names(spec: str) -> list[str]:
    """The user's model's `named_parameters()` names: the order its optimizer numbered them in.
    Built on the meta device where the factory allows it (no memory, no initialisation)."""
    import torch  # lazy: torch is heavy, and only a --model needs it

    try:
        with torch.device("meta"):
            model = build_model(spec)
    except BadInputError:
        model = build_model(spec)  # the factory wants real tensors: its own errors, if any
    return [name for name, _ in model.named_parameters()]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "(no message)"
