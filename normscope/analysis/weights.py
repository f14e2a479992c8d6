"""What the weight rules of `normscope check` hold a run to: non-finite values per parameter, each
parameter's norm relative to its first snapshot, and the total norm per snapshot.

Computed once by the analysis runner (`normscope.analysis.runner.analyze_run` with a check
configuration); the rules in `normscope.check.weight_rules` only compare these numbers with limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from normscope.trajectory import Trajectory


@dataclass(frozen=True)
class NonFiniteParam:
    """NaN/Inf in one parameter (every kind): where they first appear and in how many snapshots."""

    param: str
    layer: str
    snapshots: int  # snapshots holding the parameter
    bad_snapshots: int  # of those, with a non-finite value or norm
    first_bad_snapshot: int | None
    first_bad_count: int  # non-finite values at first_bad_snapshot (0: only the norm is non-finite)


@dataclass(frozen=True)
class ParamGrowth:
    """A parameter's norm relative to its first snapshot's: at the last snapshot (`last`, the
    "last_first" measure) and at its largest and smallest (`highest`, `lowest`: "max_min"). Not
    `measurable` (fewer than two snapshots, or a non-finite norm): the ratios are NaN."""

    param: str
    layer: str
    snapshots: int
    finite: bool
    last: float = math.nan
    last_snapshot: int | None = None
    highest: float = math.nan
    highest_snapshot: int | None = None
    lowest: float = math.nan
    lowest_snapshot: int | None = None

    @property
    def measurable(self) -> bool:
        return self.snapshots >= 2 and self.finite

    def extreme(self, bound: str, measure: str) -> tuple[float, int | None]:
        """(ratio, snapshot) the growth ("max") or collapse ("min") rule reads under `measure`."""
        if measure == "last_first":
            return self.last, self.last_snapshot
        return (self.highest, self.highest_snapshot) if bound == "max" else (self.lowest, self.lowest_snapshot)


@dataclass(frozen=True)
class WeightStats:
    """The weight rules' numbers for one run, over the parameter kinds `kinds` (empty: every kind)."""

    kinds: tuple[str, ...]
    nonfinite: tuple[NonFiniteParam, ...]
    growth: tuple[ParamGrowth, ...]
    total_snapshots: tuple[int, ...]  # snapshots with a tensor of `kinds`
    total_norms: tuple[float, ...]  # sqrt(Σ|w|²) over `kinds` at each of them


def selected_rows(trajectory: Trajectory, kinds: tuple[str, ...]) -> pd.DataFrame:
    """The rows of the parameter kinds a rule looks at (all kinds when `kinds` is empty)."""
    table = trajectory.table
    return table if not kinds else table[table["kind"].isin(kinds)]


def _growth_ratios(norms: np.ndarray, measure: str) -> tuple[float, int, float, int]:
    """(highest ratio, where; lowest ratio, where), each norm relative to the first snapshot's.

    "last_first" looks at the last snapshot only; "max_min" at the largest and smallest norm the
    parameter reached, which also catches a transient blow-up the run later recovered from.
    """
    first = norms[0]
    ratios = norms / first if first > 0 else np.full_like(norms, math.inf)
    if measure == "last_first":
        last = len(norms) - 1
        return float(ratios[last]), last, float(ratios[last]), last
    high, low = int(np.nanargmax(ratios)), int(np.nanargmin(ratios))
    return float(ratios[high]), high, float(ratios[low]), low


def _nonfinite(trajectory: Trajectory) -> tuple[NonFiniteParam, ...]:
    """Per parameter, in first-seen order, over its rows in table order; a few array operations over
    the whole table (a frame per parameter took seconds on 8k tensors)."""
    table = trajectory.table
    if table.empty:
        return ()
    codes, names = pd.factorize(table["param"], sort=False)
    count = len(names)
    rows_per_param = np.bincount(codes, minlength=count).tolist()
    _, first_row = np.unique(codes, return_index=True)
    layers = table["layer"].take(first_row).tolist()
    nonfinite = table["nonfinite"].to_numpy()
    bad_at = np.flatnonzero((nonfinite > 0) | ~np.isfinite(table["norm"].to_numpy(dtype=float)))
    bad_per_param = np.bincount(codes[bad_at], minlength=count).tolist()
    bad_codes, first_bad = np.unique(codes[bad_at], return_index=True)
    snapshots = table["snapshot"].to_numpy()
    first_bad_of = dict(zip(bad_codes.tolist(), bad_at[first_bad].tolist()))
    out = []
    for code, (param, layer, rows, bad) in enumerate(zip(names.tolist(), layers, rows_per_param, bad_per_param)):
        at = first_bad_of.get(code)
        out.append(NonFiniteParam(
            param=str(param), layer=str(layer), snapshots=rows, bad_snapshots=bad,
            first_bad_snapshot=None if at is None else int(snapshots[at]),
            first_bad_count=0 if at is None else int(nonfinite[at])))
    return tuple(out)


def _growth(trajectory: Trajectory, kinds: tuple[str, ...]) -> tuple[ParamGrowth, ...]:
    """Per parameter of `kinds`, in first-seen order, over its rows in snapshot order: the rows
    sorted once, each parameter's norms a slice of one array."""
    rows = selected_rows(trajectory, kinds)
    if rows.empty:
        return ()
    codes, names = pd.factorize(rows["param"], sort=False)
    snapshot = rows["snapshot"].to_numpy()
    order = np.lexsort((snapshot, codes))  # by parameter, then snapshot
    norms_all = rows["norm"].to_numpy(dtype=float)[order]
    snapshots_all = snapshot[order]
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1)).tolist()
    layers = rows["layer"].take(order[bounds[:-1]]).tolist()
    out = []
    for code, (param, layer) in enumerate(zip(names.tolist(), layers)):
        norms = norms_all[bounds[code]:bounds[code + 1]]
        finite = bool(np.isfinite(norms).all())
        if len(norms) < 2 or not finite:
            out.append(ParamGrowth(str(param), str(layer), len(norms), finite))
            continue
        snapshots = snapshots_all[bounds[code]:bounds[code + 1]]
        last, at_last, _, _ = _growth_ratios(norms, "last_first")
        high, at_high, low, at_low = _growth_ratios(norms, "max_min")
        out.append(ParamGrowth(str(param), str(layer), len(norms), finite, last, int(snapshots[at_last]),
                               high, int(snapshots[at_high]), low, int(snapshots[at_low])))
    return tuple(out)


def weight_stats(trajectory: Trajectory, kinds: tuple[str, ...] = ("weight",)) -> WeightStats:
    """Every number the weight rules compare with their limits, for `trajectory`."""
    totals = np.sqrt(selected_rows(trajectory, kinds).groupby("snapshot")["norm_sq"].sum(min_count=1))
    return WeightStats(
        kinds=tuple(kinds), nonfinite=_nonfinite(trajectory), growth=_growth(trajectory, tuple(kinds)),
        total_snapshots=tuple(int(s) for s in totals.index),
        total_norms=tuple(float(v) for v in totals.to_numpy(dtype=float)),
    )


__all__ = ["NonFiniteParam", "ParamGrowth", "WeightStats", "selected_rows", "weight_stats"]
