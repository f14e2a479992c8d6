"""Per (snapshot, parameter) float64 totals, summed over a parameter's pieces, and the final stats.

Totals are plain lists indexed by the `_NORM_SQ`… constants rather than objects: the engine
adds one per (tensor, snapshot), 84k on a 10 GB ResNet-shaped run, on the thread that also
starts the kernels, so each costs what a few list stores cost.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from normscope.engine.plan import Entry
from normscope.engine.reduce import GroupSums
from normscope.snapshot import ParamStats, Snapshot, SnapshotStats

# Slots of a totals list. A stream's slot stays None until a piece brings it; MISSING_PREV is
# set when some piece of the parameter had no previous counterpart (then no dot/diff at all).
_NORM_SQ, _NONFINITE, _DOT, _DIFF_SQ, _BUF_DOT, _BUF_NORM_SQ, _SQ_SUM, _MISSING_PREV = range(8)
_OPTIONAL = (("dot", _DOT), ("diff_sq", _DIFF_SQ), ("buf_dot", _BUF_DOT),
             ("buf_norm_sq", _BUF_NORM_SQ), ("sq_sum", _SQ_SUM))  # fmt: skip


class Accumulator:
    """Collects `GroupSums` group by group; `stats()` turns them into `SnapshotStats`."""

    def __init__(self) -> None:
        self._totals: dict[tuple[int, str], list[Any]] = {}

    def add_group(self, snapshot: int, names: Sequence[str], result: GroupSums) -> None:
        """Add every entry of a reduced group (`names` in entry order)."""
        sums = result.sums
        norm_sq, nonfinite = sums["norm_sq"], result.nonfinite
        present = [(column, sums[q]) for q, column in _OPTIONAL if q in sums]
        has_prev = "dot" in sums
        totals = self._totals
        for i, name in enumerate(names):
            key = (snapshot, name)
            row = totals.get(key)
            if row is None:  # the common case: a parameter read in one piece
                row = totals[key] = [norm_sq[i], nonfinite[i], None, None, None, None, None,
                                     not has_prev]  # fmt: skip
                for column, values in present:
                    row[column] = values[i]
                continue
            row[_NORM_SQ] += norm_sq[i]
            row[_NONFINITE] += nonfinite[i]
            row[_MISSING_PREV] = row[_MISSING_PREV] or not has_prev
            for column, values in present:
                row[column] = values[i] if row[column] is None else row[column] + values[i]

    def param_stats(self, snapshot: int, name: str, shape: tuple[int, ...]) -> ParamStats:
        row = self._totals.get((snapshot, name))
        if row is None:
            return ParamStats(math.prod(shape), 0.0)
        has_prev = row[_DOT] is not None and not row[_MISSING_PREV]
        return ParamStats(
            math.prod(shape),
            row[_NORM_SQ],
            row[_NONFINITE],
            row[_DOT] if has_prev else None,
            row[_DIFF_SQ] if has_prev else None,
            row[_BUF_DOT],
            row[_BUF_NORM_SQ],
            row[_SQ_SUM],
        )

    def stats(
        self,
        snapshots: Sequence[Snapshot],
        entries: Sequence[Mapping[str, Entry]],
        *,
        first: int = 0,
    ) -> list[SnapshotStats]:
        """Stats for snapshots[first:], for the planned parameters (`entries[t]`, file order)."""
        out = []
        for t in range(first, len(snapshots)):
            planned = entries[t]
            out.append(
                SnapshotStats(
                    meta=snapshots[t].meta,
                    params={n: self.param_stats(t, n, e.shape) for n, e in planned.items()},
                    shapes={n: e.shape for n, e in planned.items()},
                    dtypes={n: e.dtype for n, e in planned.items()},
                )
            )
        return out
