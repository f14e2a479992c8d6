"""Per (snapshot, parameter) float64 totals, summed over a parameter's pieces, and the final stats.

A parameter's totals are one tuple `(norm_sq, nonfinite, dot, diff_sq, buf_dot, buf_norm_sq,
sq_sum, missing_prev)`, kept per snapshot under its name: the engine adds one per (tensor,
snapshot), 34k on a 1 GB ResNet-shaped run, on the thread that also starts the kernels, so a
group's rows are made column-wise (`zip` over its sums) and stored with one `dict.update` where no
parameter of the group was seen before (every parameter read in one piece). A stream's slot is None
until a piece brings it; `missing_prev` is set when some piece of the parameter had no previous
counterpart (then no dot/diff at all). `stats()` hands the rows over as columns
(`snapshot.ParamTable`): no object per parameter.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from itertools import chain, repeat
from typing import Any, NamedTuple

import numpy as np

from normscope.engine.group import GroupSums
from normscope.engine.in_place import BlockSums
from normscope.engine.plan import Entry, Piece
from normscope.snapshot import ParamTable, Snapshot, SnapshotStats

# The optional quantities, in their slots' order after norm_sq and nonfinite.
_OPTIONAL = ("dot", "diff_sq", "buf_dot", "buf_norm_sq", "sq_sum")
_MISSING_PREV = 7


class Accumulator:
    """Collects `GroupSums` group by group; `stats()` turns them into `SnapshotStats`."""

    def __init__(self) -> None:
        self._totals: dict[int, dict[str, tuple[Any, ...]]] = {}
        # per snapshot, the in-place path's sums, bucket by bucket, as the kernel left them
        self._blocks: dict[int, list[tuple[Sequence[Piece], BlockSums]]] = {}
        # per bucket (known by its first piece: every snapshot's blocks hold the plan's Piece
        # objects), its pieces' names and whether all are whole, found once for all snapshots
        self._bucket_facts: dict[int, tuple[Sequence[Piece], list[str], bool]] = {}
        # `_block_table`'s checks of the last snapshot, kept for the next one (`_covers`)
        self._covered: tuple[list[str], list[list[str]]] | None = None
        self._numel_column: tuple[list[Entry], list[int]] | None = None

    def add_block(self, snapshot: int, pieces: Sequence[Piece], block: BlockSums) -> None:
        """Add a bucket's sums from the in-place path (`in_place.start_in_place`): kept as the
        array it is, turned into columns by `stats()`."""
        self._blocks.setdefault(snapshot, []).append((pieces, block))

    def add_group(self, snapshot: int, names: Sequence[str], result: GroupSums) -> None:
        """Add every entry of a reduced group (`names` in entry order)."""
        sums = result.sums
        columns = [sums["norm_sq"], result.nonfinite]
        columns += [sums[q] if q in sums else repeat(None) for q in _OPTIONAL]
        columns.append(repeat("dot" not in sums))
        rows = list(zip(*columns))
        totals = self._totals.setdefault(snapshot, {})
        fresh = dict(zip(names, rows))
        if len(fresh) == len(rows) and totals.keys().isdisjoint(fresh):
            totals.update(fresh)
            return
        for name, row in zip(names, rows):  # pieces of a parameter read in row slices
            before = totals.get(name)
            totals[name] = row if before is None else _merge(before, row)

    def stats(
        self,
        snapshots: Sequence[Snapshot],
        entries: Sequence[Mapping[str, Entry]],
        *,
        first: int = 0,
    ) -> list[SnapshotStats]:
        """Stats for snapshots[first:], for the planned parameters (`entries[t]`, file order),
        as `ParamTable`s: columns straight from the rows, no object per parameter."""
        out = []
        last: _Planned | None = None
        for t in range(first, len(snapshots)):
            planned = entries[t]
            # a run of one model plans its snapshots with one shared mapping (`plan._plain_entries`):
            # their names and entries are the same lists, their shapes and dtypes copies
            if last is not None and planned is last.planned:
                names, values = last.names, last.values
                shapes, dtypes = dict(last.shapes), dict(last.dtypes)
            else:
                names, values = list(planned), list(planned.values())
                shapes, dtypes = dict(zip(names, map(_SHAPE, values))), dict(zip(names, map(_DTYPE, values)))
            params = self._block_table(t, names, values)
            if params is None:
                params = self._row_table(t, names, values)
            last = _Planned(planned, names, values, shapes, dtypes)
            out.append(SnapshotStats(meta=snapshots[t].meta, params=params, shapes=shapes, dtypes=dtypes))
        return out

    def _row_table(self, t: int, names: list[str], values: list[Entry]) -> ParamTable:
        """Snapshot t's table from its rows of totals (its blocks made rows first)."""
        self._blocks_to_rows(t)
        totals = self._totals.get(t, {})
        rows = [_NEVER_READ if row is None else row for row in map(totals.get, names)]
        columns = dict(zip(_ROW_FIELDS, zip(*rows))) if rows else {f: () for f in _ROW_FIELDS}
        missing_prev = columns.pop("missing_prev")
        if any(missing_prev):  # no dot/diff for a parameter some piece had no counterpart of
            for key in ("dot_prev", "diff_sq"):
                columns[key] = [None if m else v for v, m in zip(columns[key], missing_prev)]
        columns["numel"] = list(map(_NUMEL, values))
        return ParamTable(names, columns)

    def _block_table(self, t: int, names: list[str], values: list[Entry]) -> ParamTable | None:
        """Snapshot t's table straight from its blocks' arrays, where blocks alone cover its
        planned parameters, each once and in plan order (a run of one model read in place);
        None otherwise."""
        blocks = self._blocks.get(t)
        if not blocks or t in self._totals:
            return None
        facts = [self._facts_of(pieces) for pieces, _ in blocks]
        if not self._covers(facts, names):
            return None
        columns: dict[str, list[Any]] = {"numel": self._numels(values)}
        columns["norm_sq"] = np.concatenate([b.column("norm_sq") for _, b in blocks]).tolist()
        columns["nonfinite"] = list(chain.from_iterable(b.nonfinite for _, b in blocks))
        for name, source in (("dot_prev", "dot"), ("diff_sq", "diff_sq")):
            columns[name] = list(chain.from_iterable(
                b.column(source).tolist() if b.with_prev else [None] * len(b.sums) for _, b in blocks))  # fmt: skip
        return ParamTable(names, columns)

    def _covers(self, facts: Sequence[tuple[list[str], bool]], names: list[str]) -> bool:
        """Whether the buckets of `facts` hold every name of `names`, whole and in order. Every
        snapshot of a run of one model asks with the same lists (the plan's shared mapping, the
        buckets' cached facts): the answer found for them once is kept, checked by identity."""
        lists = [n for n, _ in facts]
        known = self._covered
        if known is not None and known[0] is names and len(known[1]) == len(lists) and all(
            map(operator.is_, known[1], lists)
        ):
            return True
        if not all(whole for _, whole in facts) or list(chain.from_iterable(lists)) != names:
            return False
        self._covered = (names, lists)
        return True

    def _numels(self, values: list[Entry]) -> list[int]:
        """The `numel` column of `values`; a copy of the last one made where `values` is the same
        list (see `_covers`)."""
        known = self._numel_column
        if known is None or known[0] is not values:
            known = self._numel_column = (values, list(map(_NUMEL, values)))
        return list(known[1])

    def _facts_of(self, pieces: Sequence[Piece]) -> tuple[list[str], bool]:
        """A bucket's piece names and whether every piece is whole (`_bucket_facts`)."""
        key = id(pieces[0]) if pieces else 0
        known = self._bucket_facts.get(key)
        # the same Piece objects compare by identity: a pointer comparison each
        if known is None or list(known[0]) != list(pieces):
            known = (pieces, [piece.name for piece in pieces], all(piece.whole for piece in pieces))
            self._bucket_facts[key] = known
        return known[1], known[2]

    def _blocks_to_rows(self, t: int) -> None:
        """Snapshot t's blocks as `add_group` rows, for the general `stats()`."""
        for pieces, block in self._blocks.pop(t, []):
            quantities = ("norm_sq", "dot", "diff_sq") if block.with_prev else ("norm_sq",)
            sums = {q: block.column(q).tolist() for q in quantities}
            self.add_group(t, [p.name for p in pieces], GroupSums(sums, block.nonfinite, quantities))


# A totals row's slots as `ParamStats` fields; a planned parameter never read (zero rows) has
# `_NEVER_READ`'s: no elements, nothing known against the previous snapshot.
_ROW_FIELDS = ("norm_sq", "nonfinite", "dot_prev", "diff_sq", "buf_dot", "buf_norm_sq",
               "exp_avg_sq_sum", "missing_prev")  # fmt: skip
_NEVER_READ = (0.0, 0, None, None, None, None, None, False)
_NUMEL = operator.attrgetter("numel")
_SHAPE = operator.attrgetter("shape")
_DTYPE = operator.attrgetter("dtype")


class _Planned(NamedTuple):
    """A snapshot's planned parameters as `stats()` last used them: the plan's mapping, its
    names and entries as lists, and the shapes and dtypes made of them."""

    planned: Mapping[str, Entry]
    names: list[str]
    values: list[Entry]
    shapes: dict[str, Any]
    dtypes: dict[str, str]


def _merge(before: tuple[Any, ...], row: tuple[Any, ...]) -> tuple[Any, ...]:
    """Two pieces' totals of one parameter: sums add, a stream is None until a piece brings it."""
    merged = [
        b if r is None else r if b is None else b + r
        for b, r in zip(before[:_MISSING_PREV], row[:_MISSING_PREV])
    ]
    return (*merged, before[_MISSING_PREV] or row[_MISSING_PREV])
