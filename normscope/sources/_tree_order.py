"""The model's parameter order, rebuilt from names and the optimizer's shapes, when the weights
file lost it (safetensors sorts its keys) and nothing else gives it back.

`model.named_parameters()` walks the module tree depth first: a module's own parameters, then each
child's subtree in registration order. From the names alone these are known: that walk (a
subtree's parameters are contiguous), that numbered children (`Sequential`, `ModuleList`) come in
index order, and two conventions of how modules are written — children whose names differ only in
their numbers (`conv1`, `conv2`; `ln_1`, `ln_2`) registered in that order, and, as every torch.nn
layer does, a module's `weight` before its `bias`. Unknown are the order of other named children
and of other own parameters. Every order those
rules allow is tried against the shapes of the optimizer's saved state, group by group (the group
of each parameter set by a rule on its role, as in `_optimizer`); the mapping is taken only when
exactly one order fits.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

_MAX_FREE_CHILDREN = 10  # named children of one module tried in every order; beyond: give up
_MAX_OWN = 5  # own parameters of one module tried in every order
_DIGITS = re.compile(r"\d+")


@dataclass
class _Node:
    own: list[str] = field(default_factory=list)  # full names of its own parameters
    children: dict[str, _Node] = field(default_factory=dict)


def _tree(names: Sequence[str]) -> _Node:
    root = _Node()
    for name in names:
        *path, _leaf = name.split(".")
        node = root
        for part in path:
            node = node.children.setdefault(part, _Node())
        node.own.append(name)
    return root


def _own_orders(own: list[str]) -> list[tuple[str, ...]]:
    leaves = [n.rpartition(".")[2] for n in own]
    orders = []
    for perm in itertools.permutations(range(len(own))):
        placed = [leaves[i] for i in perm]
        if "weight" in placed and "bias" in placed and placed.index("weight") > placed.index("bias"):
            continue
        orders.append(tuple(own[i] for i in perm))
    return orders


class _Search:
    """Counts (up to 2) the orders of the tree whose parameters fit the groups' shapes."""

    def __init__(self, wanted: Sequence[Sequence[tuple[int, ...] | None]],
                 group_of: Mapping[str, int], shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.wanted, self.group_of, self.shapes = wanted, group_of, shapes
        self.memo: dict[tuple[int, tuple[int, ...]], tuple[int, list[str] | None]] = {}
        self.sizes: dict[int, tuple[int, ...]] = {}

    def size(self, node: _Node) -> tuple[int, ...]:
        key = id(node)
        if key not in self.sizes:
            counts = [0] * len(self.wanted)
            for name in node.own:
                counts[self.group_of[name]] += 1
            for child in node.children.values():
                for g, c in enumerate(self.size(child)):
                    counts[g] += c
            self.sizes[key] = tuple(counts)
        return self.sizes[key]

    def fits(self, names: Sequence[str], start: tuple[int, ...]) -> bool:
        cursor = list(start)
        for name in names:
            g = self.group_of[name]
            want = self.wanted[g][cursor[g]]
            if want is not None and want != self.shapes[name]:
                return False
            cursor[g] += 1
        return True

    def count(self, node: _Node, start: tuple[int, ...]) -> tuple[int, list[str] | None]:
        key = (id(node), start)
        if key in self.memo:
            return self.memo[key]
        result = self._count(node, start)
        self.memo[key] = result
        return result

    def _count(self, node: _Node, start: tuple[int, ...]) -> tuple[int, list[str] | None]:
        if len(node.own) > _MAX_OWN:
            raise _GiveUp
        own_ways, own_order = 0, None
        for order in _own_orders(node.own):
            if self.fits(order, start):
                own_ways += 1
                own_order = list(order)
        if own_ways == 0:
            return 0, None
        after_own = list(start)
        for name in node.own:
            after_own[self.group_of[name]] += 1
        chains = _chains(list(node.children))
        if len(chains) > _MAX_FREE_CHILDREN:
            raise _GiveUp
        before = {c: chain[k - 1] for chain in chains for k, c in enumerate(chain) if k}
        # children in any order that keeps each chain (`0, 1, 2…`; `conv1, conv2`) in its order
        ways: dict[frozenset[str], tuple[int, list[str] | None]] = {frozenset(): (1, [])}
        for _ in range(len(node.children)):
            step: dict[frozenset[str], tuple[int, list[str] | None]] = {}
            for placed, (w, order) in ways.items():
                cursor = list(after_own)
                for child in placed:
                    for g, c in enumerate(self.size(node.children[child])):
                        cursor[g] += c
                options = [c for c in node.children
                           if c not in placed and (c not in before or before[c] in placed)]  # fmt: skip
                for child in options:
                    cw, corder = self.count(node.children[child], tuple(cursor))
                    if cw == 0:
                        continue
                    nxt = placed | {child}
                    old = step.get(nxt, (0, None))
                    total = min(2, old[0] + w * cw)
                    step[nxt] = (total, (order or []) + (corder or []) if total == 1 else None)
            ways = step
            if not ways:
                return 0, None
        w, order = ways.get(frozenset(node.children), (0, None))
        total = min(2, own_ways * w)
        return total, (own_order + order) if total == 1 and own_order is not None and order is not None else None


def _chains(children: list[str]) -> list[list[str]]:
    """Children whose names differ only in their numbers, in numeric order (a `Sequential`'s
    `0, 1, 2`, a block's `conv1, conv2`): registered in that order. Others are chains of one."""
    by_stem: dict[str, list[str]] = {}
    for child in children:
        by_stem.setdefault(_DIGITS.sub("#", child), []).append(child)
    return [sorted(group, key=_numbers) for group in by_stem.values()]


def _numbers(name: str) -> tuple[int, ...]:
    return tuple(int(d) for d in _DIGITS.findall(name))


class _GiveUp(Exception):
    pass


def order_from_tree(
    wanted: Sequence[Sequence[tuple[int, ...] | None]],
    candidates: Sequence[str],
    shapes: Mapping[str, tuple[int, ...]],
    group_of: Callable[[str], int],
) -> tuple[int, list[str] | None]:
    """(number of fitting orders, capped at 2; the order when it is the only one)."""
    search = _Search(wanted, {n: group_of(n) for n in candidates}, shapes)
    try:
        return search.count(_tree(candidates), tuple(0 for _ in wanted))
    except (_GiveUp, RecursionError):
        return 2, None

