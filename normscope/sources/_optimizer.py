"""Optimizer state dicts → hyper-parameters (`ParamGroup`s) and per-parameter state.

`Optimizer.state_dict()` numbers parameters by position, in the order they appear across
`param_groups` (for a single group: `model.parameters()` order), not by name. We map positions to
names through the model state_dict's order, leaving out buffers, and check every shape we can;
where shapes leave a tie, the group structure decides (recipes split groups by a parameter's role:
bias, vector, normalisation layer). When torch saved `param_names` (optimizers built from
`named_parameters()`) or a source names its parameters (DeepSpeed), those are used directly.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from normscope.file_reads import FileReader, item
from normscope.snapshot import ParamGroup

from ._keys import clean_names
from ._tree_order import order_from_tree

# buffers that are never optimizer parameters
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
STATE_TENSOR_KEYS = ("momentum_buffer", "exp_avg", "exp_avg_sq")

_K = TypeVar("_K")


@dataclass
class OptimizerInfo:
    optimizer: str | None
    param_groups: tuple[ParamGroup, ...]
    state: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def optimizer_type(group: Mapping[str, Any]) -> str | None:
    """Tell the optimizer class from the keys torch writes in its param_groups.

    Args:
        group: one param group of `optimizer.state_dict()`.

    Returns:
        "SGD", "AdamW", "Adam", "Adam-family", "RMSprop" or "Adagrad"; None where the keys do
        not tell.

    >>> optimizer_type({"lr": 0.1, "momentum": 0.9, "dampening": 0, "nesterov": False})
    'SGD'
    >>> optimizer_type({"lr": 1e-3, "betas": (0.9, 0.999), "decoupled_weight_decay": True})
    'AdamW'
    """
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
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int past float's range
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


_MAX_STATES = (
    200_000  # give up (and keep only hyper-parameters) beyond this much search
)
_MAX_RULES = 4096  # role -> group assignments tried when order and shapes leave a tie


def _solve(
    wanted: Sequence[Sequence[tuple[int, ...] | None]],
    candidates: Sequence[str],
    shapes: Mapping[str, tuple[int, ...]],
    allowed: Sequence[int | None] | None = None,
) -> tuple[int, list[int] | None]:
    """(number of assignments, capped at 2; the group each candidate goes to, -1 skipped).

    Walk the model's tensors in order, giving each to the next open slot of a group whose saved
    state has the same shape (a slot without state fits any shape) or skipping it. `allowed[i]`
    restricts candidate i to one group. The choice list is returned when exactly one assignment
    uses every slot.
    """
    total = sum(len(w) for w in wanted)
    skips = len(candidates) - total
    if skips < 0:
        return 0, None
    start = tuple(0 for _ in wanted)
    # state: slots filled per group -> (number of ways, capped at 2; back-pointer; choice)
    layers: list[dict[tuple[int, ...], tuple[int, tuple[int, ...] | None, int]]] = [
        {start: (1, None, -1)}
    ]
    for i, name in enumerate(candidates):
        here: dict[tuple[int, ...], tuple[int, tuple[int, ...] | None, int]] = {}
        only = None if allowed is None else allowed[i]
        shape = shapes[name]
        for filled, (ways, _prev, _choice) in layers[-1].items():
            moves = []
            if i - sum(filled) < skips:
                moves.append((filled, -1))
            for k, group in enumerate(wanted):
                if only is not None and k != only:
                    continue
                j = filled[k]
                if j < len(group) and (group[j] is None or group[j] == shape):
                    moves.append((filled[:k] + (j + 1,) + filled[k + 1 :], k))
            for nxt, choice in moves:
                old = here.get(nxt)
                here[nxt] = (min(2, ways + (old[0] if old else 0)), filled, choice)
        if not here or len(here) > _MAX_STATES:
            return 0, None
        layers.append(here)
    end = tuple(len(w) for w in wanted)
    ways = layers[-1].get(end, (0,))[0]
    if ways != 1:
        return ways, None
    choices = [-1] * len(candidates)
    filled = end
    for i in range(len(candidates), 0, -1):
        _ways, prev, choice = layers[i][filled]
        choices[i - 1] = choice
        filled = prev  # type: ignore[assignment]
    return 1, choices


_NORM_MODULE = re.compile(r"(^|[._])(\w*norm\w*|ln\w*|bn\d*|gn\d*)$", re.IGNORECASE)


def _role(name: str, names: set[str], shapes: Mapping[str, tuple[int, ...]]) -> tuple[Any, ...]:
    """What optimizer recipes split parameter groups by: the parameter's own name (`bias`), whether
    it is a vector, and whether its module is a normalisation layer (running statistics beside
    it, or a norm-like module name)."""
    parent, _, leaf = name.rpartition(".")
    normish = f"{parent}.running_mean" in names or bool(_NORM_MODULE.search(parent))
    return (leaf, len(shapes[name]) <= 1, normish)


def _impurity(choices: Sequence[int], roles: Sequence[tuple[Any, ...]], n_groups: int) -> int:
    """How many distinct values of each role feature the groups hold, summed: a recipe puts like
    with like, so the assignment that mixes least is the one it made."""
    seen: list[list[set[Any]]] = [[set(), set(), set()] for _ in range(n_groups)]
    for choice, role in zip(choices, roles):
        if choice >= 0:
            for feature, value in zip(seen[choice], role):
                feature.add(value)
    return sum(len(f) for group in seen for f in group)


def _map_positions(
    groups: Sequence[Sequence[int]],
    state: Mapping[int, Mapping[str, Any]],
    candidates: Sequence[str],
    shapes: Mapping[str, tuple[int, ...]],
) -> dict[int, str] | None:
    """Optimizer position -> parameter name, or None when the evidence does not single one out.

    Each param group lists its parameters in model order, but groups may interleave (the usual
    decay / no-decay split, torchvision's other / norm / bias), and the model may hold tensors the
    optimizer does not (frozen parameters, float buffers). Order and shapes first; when they leave
    several assignments (a BatchNorm's weight and bias have one shape, and sit in different
    groups), the recipe's own logic decides: groups are made by a rule on each parameter's role
    (`_role`), so only assignments where each role goes to one group are kept, and of those the
    one whose groups mix the fewest roles is taken, if it is the only one.
    """
    wanted = [[_shape_of(state.get(pos, {})) for pos in group] for group in groups]
    ways, choices = _solve(wanted, candidates, shapes)
    if ways == 2 and 1 < len(groups):
        choices = _by_roles(wanted, candidates, shapes)
    if choices is None:
        return None
    mapping: dict[int, str] = {}
    slot = [0] * len(groups)
    for name, choice in zip(candidates, choices):
        if choice >= 0:
            mapping[groups[choice][slot[choice]]] = name
            slot[choice] += 1
    return mapping


def _by_roles(
    wanted: Sequence[Sequence[tuple[int, ...] | None]],
    candidates: Sequence[str],
    shapes: Mapping[str, tuple[int, ...]],
) -> list[int] | None:
    """The one assignment of candidates to groups that order and shapes allow under some rule
    sending each role (`_role`) to one group, and that mixes the fewest roles; None where there
    is none, or a tie."""
    names = set(shapes)
    roles = [_role(n, names, shapes) for n in candidates]
    if len({role[0] for role in roles}) * 2 > len(candidates):
        return None  # names that share no leaf (`weight`, `bias`) tell no roles apart
    n_groups = len(wanted)
    if n_groups ** len(set(roles)) > _MAX_RULES:
        return None
    sizes = [len(w) for w in wanted]
    skips = len(candidates) - sum(sizes)

    def fits(given: list[int]) -> bool:  # every slot can be filled, no more skipped than spare
        return all(h >= s for h, s in zip(given, sizes)) and sum(given) - sum(sizes) <= skips

    found: dict[tuple[int, ...], int] = {}
    for allowed in _role_assignments(roles, n_groups, fits):
        ways, choices = _solve(wanted, candidates, shapes, allowed)
        if ways == 1 and choices is not None:
            found.setdefault(tuple(choices), _impurity(choices, roles, n_groups))
    winner = _least_mixed(found)
    return None if winner is None else list(winner)


def _role_assignments(roles: Sequence[tuple[Any, ...]], n_groups: int,
                      fits: Callable[[list[int]], bool]) -> Iterator[list[int]]:  # fmt: skip
    """Each rule sending every kind of role to one group, as the group of each candidate, where
    `fits` accepts how many candidates each group then gets."""
    kinds = sorted(set(roles), key=repr)
    per_kind = [roles.count(k) for k in kinds]
    for rule in itertools.product(range(n_groups), repeat=len(kinds)):
        given = [0] * n_groups
        for count, g in zip(per_kind, rule):
            given[g] += count
        if fits(given):
            group_of = dict(zip(kinds, rule))
            yield [group_of[r] for r in roles]


def _least_mixed(found: Mapping[_K, int]) -> _K | None:
    """The one key of lowest score (`_impurity`); None where there is none, or a tie."""
    if not found:
        return None
    best = min(found.values())
    winners = [key for key, score in found.items() if score == best]
    return winners[0] if len(winners) == 1 else None


def _map_by_tree(
    groups: Sequence[Sequence[int]],
    state: Mapping[int, Mapping[str, Any]],
    candidates: Sequence[str],
    shapes: Mapping[str, tuple[int, ...]],
) -> dict[int, str] | None:
    """For models whose parameter order is lost: the one order of the module tree the names
    allow that fits the saved shapes (`_tree_order`), each group's members set by a role rule
    when there are several groups."""
    wanted = [[_shape_of(state.get(pos, {})) for pos in group] for group in groups]
    sizes = [len(w) for w in wanted]
    if len(candidates) != sum(sizes) or not candidates:
        return None  # frozen parameters or float buffers: the tree walk cannot skip them
    roles: list[tuple[Any, ...]] | None = None
    assignments: Iterable[list[int]] = [[0] * len(candidates)]
    if len(groups) > 1:
        names = set(shapes)
        roles = [_role(n, names, shapes) for n in candidates]
        if len(groups) ** len(set(roles)) > _MAX_RULES:
            return None
        assignments = _role_assignments(roles, len(groups), lambda given: given == sizes)
    found: dict[tuple[tuple[int, str], ...], int] = {}
    for assignment in assignments:
        group_of = dict(zip(candidates, assignment))
        ways, order = order_from_tree(wanted, candidates, shapes, group_of.__getitem__)
        if ways > 1 and len(groups) == 1:
            return None  # one group and several orders: nothing tells them apart
        if ways != 1 or order is None:
            continue
        score = 0 if roles is None else _impurity(assignment, roles, len(groups))
        found.setdefault(_positions_in_order(groups, order, group_of), score)
    winner = _least_mixed(found)
    return None if winner is None else dict(winner)


def _positions_in_order(groups: Sequence[Sequence[int]], order: Sequence[str],
                        group_of: Mapping[str, int]) -> tuple[tuple[int, str], ...]:  # fmt: skip
    """(position, name) pairs, sorted, for names in `order` filling each one's group in turn."""
    slot = [0] * len(groups)
    mapping = []
    for name in order:
        g = group_of[name]
        mapping.append((groups[g][slot[g]], name))
        slot[g] += 1
    return tuple(sorted(mapping))


_DIGIT_RUN = re.compile(r"\d+")


def _numeric_order(name: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _map_by_shape_classes(
    groups: Sequence[Sequence[int]],
    state: Mapping[int, Mapping[str, Any]],
    candidates: Sequence[str],
    shapes: Mapping[str, tuple[int, ...]],
) -> dict[int, str]:
    """For models whose parameter order is lost (safetensors sorts its keys).

    Positions are grouped by the shape of their saved state, names by their tensor's shape. A
    class is mapped when it has as many names as positions, all in one param group, and either
    one of each, or names that differ only in their numbers (`blocks.0.qkv.weight`,
    `blocks.1.qkv.weight`, …): children of a ModuleList/Sequential are registered in index order,
    so numeric order is `model.parameters()` order. Anything else (e.g. `q_proj` and `k_proj` of
    one shape) is left unmapped rather than guessed.
    """
    group_of = {pos: g for g, group in enumerate(groups) for pos in group}
    positions_by_shape: dict[tuple[int, ...], list[int]] = {}
    for group in groups:
        for pos in group:
            shape = _shape_of(state.get(pos, {}))
            if shape is not None:
                positions_by_shape.setdefault(shape, []).append(pos)
    names_by_shape: dict[tuple[int, ...], list[str]] = {}
    for name in candidates:
        names_by_shape.setdefault(shapes[name], []).append(name)
    mapping: dict[int, str] = {}
    for shape, positions in positions_by_shape.items():
        names = names_by_shape.get(shape, [])
        if len(names) != len(positions) or len({group_of[p] for p in positions}) != 1:
            continue
        if len(names) > 1 and len({_DIGIT_RUN.sub("#", n) for n in names}) != 1:
            continue
        mapping.update(zip(positions, sorted(names, key=_numeric_order)))
    return mapping


def read_optimizer(
    opt: Mapping[str, Any],
    model_names: Sequence[str],
    shapes: Mapping[str, tuple[int, ...]],
    make_ref: Callable[[str, Any], Any],
    where: str,
    *,
    order_known: bool = True,
) -> OptimizerInfo:
    """Hyper-parameters and per-parameter state of one optimizer state_dict.

    Args:
        opt: the optimizer's state_dict (`param_groups`, `state`).
        model_names: the clean names of the model's floating tensors in state_dict order.
        shapes: each of those tensors' shape.
        make_ref: `make_ref(name, tensor)` wraps a state tensor as a lazy ref.
        where: the file, for warnings.
        order_known: the model's tensors are in `model.parameters()` order; False (safetensors
            sorts its keys) gives state only to parameters the module tree or their shape
            identifies.

    Returns:
        The optimizer's kind, its groups' hyper-parameters, the state by parameter name, and
        warnings for the user where state was dropped or the groups were unreadable.
    """
    groups = opt.get("param_groups") or []
    state: Mapping[int, Mapping[str, Any]] = opt.get("state") or {}
    if not _groups_readable(groups, state):
        return OptimizerInfo(
            None, (), warnings=[f"{where}: optimizer param_groups unreadable; ignored"]
        )
    kind = next((k for k in (optimizer_type(g) for g in groups) if k), None)
    group_positions = [list(g.get("params") or []) for g in groups]
    positions = [p for ps in group_positions for p in ps]
    warnings: list[str] = []
    by_pos = _names_by_position(groups, group_positions, state, model_names, shapes, where,
                                order_known=order_known, warnings=warnings)  # fmt: skip
    if by_pos is None:
        warnings.append(
            f"{where}: could not match the optimizer's {len(positions)} parameters to the model's "
            f"{len(model_names)} tensors; kept its hyper-parameters, dropped per-parameter state"
        )
        param_groups = tuple(_param_group(g, (), kind) for g in groups)
        return OptimizerInfo(kind, param_groups, {}, warnings)

    param_groups = tuple(
        _param_group(g, [by_pos[p] for p in g.get("params") or [] if p in by_pos], kind)
        for g in groups
    )
    # the step counts are read, not touched in their file's mapping: the file may be cut short
    with FileReader() as reader:
        per_param = {name: entry for pos, name in by_pos.items()
                     if (entry := _state_entry(name, state.get(pos) or {}, make_ref, reader))}  # fmt: skip
    return OptimizerInfo(kind, param_groups, per_param, warnings)


def _groups_readable(groups: Any, state: Any) -> bool:
    """The shapes `read_optimizer` relies on, as `optimizer.state_dict()` writes them: a list of
    group dicts whose `params` (and `param_names`) are lists of ints or names, and a state dict of
    dicts. A damaged file can hold anything in their place."""
    def names(value: Any) -> bool:
        return value is None or (isinstance(value, (list, tuple))
                                 and all(type(v) in (int, str) for v in value))  # fmt: skip

    return (
        isinstance(groups, (list, tuple))
        and all(isinstance(g, Mapping) and names(g.get("params")) and names(g.get("param_names"))
                for g in groups)  # fmt: skip
        and isinstance(state, Mapping)
        and all(isinstance(s, Mapping) for s in state.values())
    )


def _names_by_position(
    groups: Sequence[Mapping[str, Any]],
    group_positions: list[list[Any]],
    state: Mapping[int, Mapping[str, Any]],
    model_names: Sequence[str],
    shapes: Mapping[str, tuple[int, ...]],
    where: str,
    *,
    order_known: bool,
    warnings: list[str],
) -> dict[Any, str] | None:
    """Which model tensor each of the optimizer's parameter positions is: from the names it saved
    (`param_names`, or DCP's name keys) where it has them, else from the model's parameter order
    (`order_known`), else from the module tree and shapes. None where nothing fits; a partial map
    adds its warning to `warnings`."""
    positions = [p for ps in group_positions for p in ps]
    saved_names = [n for g in groups for n in (g.get("param_names") or [])]
    if positions and all(isinstance(p, str) for p in positions):
        # torch.distributed.checkpoint.state_dict keys optimizer state by parameter name
        saved_names = list(positions)
    if saved_names and len(saved_names) == len(positions):
        cleaned = clean_names(saved_names)
        by_pos = dict(zip(positions, (cleaned[n] for n in saved_names)))
        return by_pos if all(n in shapes for n in by_pos.values()) else None
    candidates = [n for n in model_names if not n.endswith(_BUFFER_SUFFIXES)]
    if order_known:
        return _map_positions(group_positions, state, candidates, shapes)
    by_pos = _map_by_tree(group_positions, state, candidates, shapes)
    if by_pos is None:
        by_pos = _map_by_shape_classes(group_positions, state, candidates, shapes)
    missing = len(positions) - len(by_pos)
    if missing and by_pos:
        warnings.append(
            f"{where}: the weights file does not keep parameter order and the optimizer has "
            f"no param_names; state kept for the {len(by_pos)} parameters that shape and "
            f"layer numbering identify, dropped for {missing} others (--model gives the order)"
        )
    return by_pos or None


def _state_entry(name: str, saved: Mapping[str, Any], make_ref: Callable[[str, Any], Any],
                 reader: FileReader) -> dict[str, Any]:  # fmt: skip
    """One parameter's optimizer state as the engine reads it: refs for its state tensors, and
    its step count where it is a number."""
    entry: dict[str, Any] = {}
    for key, value in saved.items():
        if key in STATE_TENSOR_KEYS and hasattr(value, "shape"):
            entry[key] = make_ref(f"{name}:{key}", value)
        elif key == "step":
            step = _float(_scalar(value, reader))
            if step is not None:
                entry["step"] = step
    return entry


def _scalar(value: Any, reader: FileReader) -> Any:
    """A step count as a Python number where it is a one-element tensor (read by `reader`)."""
    if not hasattr(value, "item"):
        return value
    if getattr(value, "ndim", None) is not None and math.prod(value.shape) == 1:
        return item(value, reader)  # a tensor, or the in-place reader's numpy view of its file
    return value.item()
