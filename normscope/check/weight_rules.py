"""Rules that read only the norm trajectory: non-finite weights, growth/collapse, total-norm bounds."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from normscope.check.findings import CheckContext, Finding

if TYPE_CHECKING:  # pragma: no cover
    from normscope.trajectory import Trajectory


def selected_rows(trajectory: Trajectory, kinds: tuple[str, ...]) -> pd.DataFrame:
    """The rows of the parameter kinds a rule looks at (all kinds when `kinds` is empty)."""
    table = trajectory.table
    return table if not kinds else table[table["kind"].isin(kinds)]


def _path_at(trajectory: Trajectory, snapshot: int) -> str | None:
    metas = trajectory.snapshots
    return metas[snapshot].path if 0 <= snapshot < len(metas) else None


def _fmt(x: float) -> str:
    return f"{x:.4g}"


@dataclass(frozen=True)
class NonFiniteRule:
    """No parameter may hold NaN or Inf in any snapshot (every kind, not only `kinds`)."""

    name: str = "nonfinite"

    def evaluate(self, trajectory: Trajectory, context: CheckContext) -> list[Finding]:
        severity = context.severity_of(self.name)
        findings = []
        for param, rows in trajectory.table.groupby("param", sort=False):
            bad = rows[(rows["nonfinite"] > 0) | ~np.isfinite(rows["norm"].to_numpy(dtype=float))]
            layer = str(rows["layer"].iloc[0])
            if bad.empty:
                findings.append(Finding(self.name, severity, True, "all values finite", param=str(param),
                                        layer=layer, value=0.0, limit=0.0, config_key="check.nonfinite"))
                continue
            first = int(bad["snapshot"].iloc[0])
            count = int(bad["nonfinite"].iloc[0])
            what = f"{count} non-finite value(s)" if count else "a non-finite norm"
            findings.append(Finding(
                self.name, severity, False,
                f"{what} first at snapshot {first}, in {len(bad)} of {len(rows)} snapshot(s)",
                param=str(param), layer=layer, value=float(count), limit=0.0, snapshot=first,
                path=_path_at(trajectory, first), config_key="check.nonfinite",
            ))
        return findings


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


@dataclass(frozen=True)
class GrowthRule:
    """Per-parameter norm ratio (see `_growth_ratios`) must stay within [min_growth, max_growth].

    `bound` "max" is the growth rule (rule name "growth"), "min" the collapse rule ("collapse").
    """

    bound: str  # "max" or "min"
    limit: float
    measure: str = "last_first"

    @property
    def name(self) -> str:
        return "growth" if self.bound == "max" else "collapse"

    def evaluate(self, trajectory: Trajectory, context: CheckContext) -> list[Finding]:
        severity = context.severity_of(self.name)
        key = "check.max_growth" if self.bound == "max" else "check.min_growth"
        rows = selected_rows(trajectory, context.config.kinds)
        findings = []
        for param, group in rows.groupby("param", sort=False):
            group = group.sort_values("snapshot")
            norms = group["norm"].to_numpy(dtype=float)
            layer = str(group["layer"].iloc[0])
            finite = np.isfinite(norms)
            if len(norms) < 2 or not finite.all():
                why = "fewer than two snapshots" if len(norms) < 2 else "non-finite norms"
                findings.append(Finding(self.name, severity, len(norms) < 2 and finite.all(),
                                        f"not measurable: {why}", param=str(param), layer=layer,
                                        limit=self.limit, config_key=key))
                continue
            high, at_high, low, at_low = _growth_ratios(norms, self.measure)
            value, at = (high, at_high) if self.bound == "max" else (low, at_low)
            ok = value <= self.limit if self.bound == "max" else value >= self.limit
            snapshot = int(group["snapshot"].iloc[at])
            relation = ("<=" if ok else ">") if self.bound == "max" else (">=" if ok else "<")
            what = "grew" if value >= 1 else "shrank"
            message = (f"norm {what} x{_fmt(value)} (snapshot {snapshot} vs first), {relation} "
                       f"{'max' if self.bound == 'max' else 'min'} x{_fmt(self.limit)}")
            findings.append(Finding(self.name, severity, ok, message, param=str(param), layer=layer,
                                    value=value, limit=self.limit, snapshot=snapshot,
                                    path=_path_at(trajectory, snapshot), config_key=key))
        return findings


def total_norms(trajectory: Trajectory, kinds: tuple[str, ...]) -> pd.Series:
    """sqrt(sum |w|^2) over the selected kinds, per snapshot (index: snapshot)."""
    rows = selected_rows(trajectory, kinds)
    return np.sqrt(rows.groupby("snapshot")["norm_sq"].sum(min_count=1))


@dataclass(frozen=True)
class TotalNormRule:
    """The total norm over `kinds` must stay within [min_total_norm, max_total_norm] in every snapshot."""

    minimum: float | None
    maximum: float | None
    name: str = "total_norm"

    def evaluate(self, trajectory: Trajectory, context: CheckContext) -> list[Finding]:
        severity = context.severity_of(self.name)
        totals = total_norms(trajectory, context.config.kinds)
        kinds = ",".join(context.config.kinds) or "all"
        findings = []
        for bound, limit in (("min", self.minimum), ("max", self.maximum)):
            if limit is None:
                continue
            key = f"check.{bound}_total_norm"
            scope = f"total norm ({kinds}) {bound}"
            if totals.empty or not np.isfinite(totals.to_numpy(dtype=float)).all():
                findings.append(Finding(self.name, severity, False, "total norm is missing or non-finite",
                                        scope=scope, limit=limit, config_key=key))
                continue
            at = int(totals.idxmin() if bound == "min" else totals.idxmax())
            value = float(totals.loc[at])
            ok = value >= limit if bound == "min" else value <= limit
            relation = (">=" if ok else "<") if bound == "min" else ("<=" if ok else ">")
            findings.append(Finding(
                self.name, severity, ok,
                f"{'lowest' if bound == 'min' else 'highest'} total norm {_fmt(value)} at snapshot {at}, "
                f"{relation} {bound} {_fmt(limit)}",
                scope=scope, value=value, limit=limit, snapshot=at, path=_path_at(trajectory, at),
                config_key=key,
            ))
        return findings
