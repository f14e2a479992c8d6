"""Per (snapshot, parameter) float64 totals, summed over a parameter's pieces, and the final stats."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from normscope.engine.plan import Entry
from normscope.engine.reduce import GroupSums
from normscope.snapshot import ParamStats, Snapshot, SnapshotStats


@dataclass
class Totals:
    norm_sq: float = 0.0
    nonfinite: int = 0
    dot: float | None = None
    diff_sq: float | None = None
    buf_dot: float | None = None
    buf_norm_sq: float | None = None
    sq_sum: float | None = None
    missing_prev: bool = (
        False  # some piece had no previous counterpart: no dot/diff at all
    )


def _add(current: float | None, value: float) -> float:
    return value if current is None else current + value


class Accumulator:
    """Collects `GroupSums` piece by piece; `stats()` turns them into `SnapshotStats`."""

    def __init__(self) -> None:
        self._totals: dict[tuple[int, str], Totals] = {}

    def add(
        self, snapshot: int, name: str, sums: dict[str, float], nonfinite: int
    ) -> None:
        totals = self._totals.setdefault((snapshot, name), Totals())
        totals.norm_sq += sums["norm_sq"]
        totals.nonfinite += nonfinite
        if "dot" in sums:
            totals.dot = _add(totals.dot, sums["dot"])
            totals.diff_sq = _add(totals.diff_sq, sums["diff_sq"])
        else:
            totals.missing_prev = True
        if "buf_dot" in sums:
            totals.buf_dot = _add(totals.buf_dot, sums["buf_dot"])
            totals.buf_norm_sq = _add(totals.buf_norm_sq, sums["buf_norm_sq"])
        if "sq_sum" in sums:
            totals.sq_sum = _add(totals.sq_sum, sums["sq_sum"])

    def add_group(self, snapshot: int, names: Sequence[str], result: GroupSums) -> None:
        """`add` for every entry of a reduced group (`names` in entry order)."""
        columns = [result.sums[q] for q in result.quantities]
        for i, name in enumerate(names):
            self.add(
                snapshot,
                name,
                {q: column[i] for q, column in zip(result.quantities, columns)},
                result.nonfinite[i],
            )

    def param_stats(
        self, snapshot: int, name: str, shape: tuple[int, ...]
    ) -> ParamStats:
        totals = self._totals.get((snapshot, name), Totals())
        has_prev = totals.dot is not None and not totals.missing_prev
        return ParamStats(
            numel=math.prod(shape),
            norm_sq=totals.norm_sq,
            nonfinite=totals.nonfinite,
            dot_prev=totals.dot if has_prev else None,
            diff_sq=totals.diff_sq if has_prev else None,
            buf_dot=totals.buf_dot,
            buf_norm_sq=totals.buf_norm_sq,
            exp_avg_sq_sum=totals.sq_sum,
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
                    params={
                        n: self.param_stats(t, n, e.shape) for n, e in planned.items()
                    },
                    shapes={n: e.shape for n, e in planned.items()},
                    dtypes={n: e.dtype for n, e in planned.items()},
                )
            )
        return out
