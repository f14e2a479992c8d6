"""Optimizer state dicts → hyper-parameters (`ParamGroup`s) and per-parameter state.

`Optimizer.state_dict()` numbers parameters by position, in the order they appear across
`param_groups` (for a single group: `model.parameters()` order), not by name. We map positions to
names through the model state_dict's order, leaving out buffers, and check every shape we can. When
torch saved `param_names` (optimizers built from `named_parameters()`) those are used directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from normscope.snapshot import ParamGroup

from ._keys import clean_names

# buffers that are never optimizer parameters
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
STATE_TENSOR_KEYS = ("momentum_buffer", "exp_avg", "exp_avg_sq")


@dataclass
class OptimizerInfo:
    optimizer: str | None
    param_groups: tuple[ParamGroup, ...]
    state: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def optimizer_type(group: Mapping[str, Any]) -> str | None:
    """Tell the optimizer class from the keys torch writes in its param_groups."""
    if "betas" in group:
        if group.get("decoupled_weight_decay"):
            return "AdamW"
        if "decoupled_weight_decay" in group or "amsgrad" in group:
            return "Adam"
        return "Adam-family"
    if "nesterov" in group and "dampening" in group:
        return "SGD"
    if "alpha" in group and "centered" in group:
        return "RMSprop"
    if "lr_decay" in group:
        return "Adagrad"
    return None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _betas(value: Any) -> tuple[float, float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        b1, b2 = _float(value[0]), _float(value[1])
        if b1 is not None and b2 is not None:
            return (b1, b2)
    return None


def _param_group(
    group: Mapping[str, Any], names: Sequence[str], kind: str | None
) -> ParamGroup:
    nesterov = group.get("nesterov")
    decoupled = group.get("decoupled_weight_decay")
    if decoupled is None and kind == "AdamW":
        decoupled = True
    return ParamGroup(
        params=tuple(names),
        lr=_float(group.get("lr")),
        weight_decay=_float(group.get("weight_decay")),
        momentum=_float(group.get("momentum")),
        dampening=_float(group.get("dampening")),
        nesterov=bool(nesterov) if nesterov is not None else None,
        betas=_betas(group.get("betas")),
        eps=_float(group.get("eps")),
        decoupled_weight_decay=bool(decoupled) if decoupled is not None else None,
    )


def _shape_of(state: Mapping[str, Any]) -> tuple[int, ...] | None:
    for key in STATE_TENSOR_KEYS:
        value = state.get(key)
        if value is not None and hasattr(value, "shape"):
            return tuple(value.shape)
    return None


def _map_positions(
    positions: Sequence[int],
    state: Mapping[int, Mapping[str, Any]],
    candidates: Sequence[str],
    shapes: Mapping[str, tuple[int, ...]],
) -> list[str] | None:
    """Names for optimizer positions, in order, or None when the shapes say the mapping is wrong.

    Equal counts: one to one. More candidates than positions (frozen parameters, float buffers we
    could not rule out): walk both lists, skipping candidates whose shape does not fit — accepted
    only when every position has a state tensor to check against.
    """
    if len(candidates) == len(positions):
        for pos, name in zip(positions, candidates):
            shape = _shape_of(state.get(pos, {}))
            if shape is not None and shape != shapes[name]:
                return None
        return list(candidates)
    if len(candidates) < len(positions):
        return None
    wanted = [_shape_of(state.get(pos, {})) for pos in positions]
    if any(s is None for s in wanted):
        return None
    names: list[str] = []
    it = iter(candidates)
    for shape in wanted:
        name = next((c for c in it if shapes[c] == shape), None)
        if name is None:
            return None
        names.append(name)
    return names


def read_optimizer(
    opt: Mapping[str, Any],
    model_names: Sequence[str],
    shapes: Mapping[str, tuple[int, ...]],
    make_ref: Callable[[str, Any], Any],
    where: str,
) -> OptimizerInfo:
    """Hyper-parameters and per-parameter state of one optimizer state_dict.

    `model_names` are the clean names of the model's floating tensors in state_dict order;
    `make_ref(name, tensor)` wraps a state tensor as a lazy ref.
    """
    groups = opt.get("param_groups") or []
    state: Mapping[int, Mapping[str, Any]] = opt.get("state") or {}
    if not isinstance(groups, (list, tuple)) or not all(
        isinstance(g, Mapping) for g in groups
    ):
        return OptimizerInfo(
            None, (), warnings=[f"{where}: optimizer param_groups unreadable; ignored"]
        )
    kind = next((k for k in (optimizer_type(g) for g in groups) if k), None)
    positions = [p for g in groups for p in (g.get("params") or [])]
    warnings: list[str] = []

    names: list[str] | None
    saved_names = [n for g in groups for n in (g.get("param_names") or [])]
    if saved_names and len(saved_names) == len(positions):
        cleaned = clean_names(saved_names)
        names = [cleaned[n] for n in saved_names]
        if not all(n in shapes for n in names):
            names = None
    else:
        candidates = [n for n in model_names if not n.endswith(_BUFFER_SUFFIXES)]
        names = _map_positions(positions, state, candidates, shapes)
        if names is not None and len(groups) > 1:
            warnings.append(
                f"{where}: {len(groups)} optimizer param groups without param_names; parameters were "
                "matched to optimizer state in model order, checked by shape"
            )
    if names is None:
        warnings.append(
            f"{where}: could not match the optimizer's {len(positions)} parameters to the model's "
            f"{len(model_names)} tensors; kept its hyper-parameters, dropped per-parameter state"
        )
        param_groups = tuple(_param_group(g, (), kind) for g in groups)
        return OptimizerInfo(kind, param_groups, {}, warnings)

    by_pos = dict(zip(positions, names))
    param_groups = tuple(
        _param_group(g, [by_pos[p] for p in g.get("params") or []], kind)
        for g in groups
    )
    per_param: dict[str, dict[str, Any]] = {}
    for pos, name in by_pos.items():
        entry: dict[str, Any] = {}
        for key, value in (state.get(pos) or {}).items():
            if key in STATE_TENSOR_KEYS and hasattr(value, "shape"):
                entry[key] = make_ref(f"{name}:{key}", value)
            elif key == "step":
                step = _float(value.item() if hasattr(value, "item") else value)
                if step is not None:
                    entry["step"] = step
        if entry:
            per_param[name] = entry
    return OptimizerInfo(kind, param_groups, per_param, warnings)
