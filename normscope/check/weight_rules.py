"""Rules on the weight norms: non-finite weights, growth/collapse, total-norm bounds.

They compare the numbers of `RunAnalysis.weights` (`normscope.analysis.weights`, computed by the
analysis runner) with their limits and compute nothing themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from normscope.check.findings import CheckContext, Finding

if TYPE_CHECKING:  # pragma: no cover
    from normscope.trajectory import Trajectory


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
        for p in context.weights(trajectory).nonfinite:
            if p.first_bad_snapshot is None:
                findings.append(Finding(self.name, severity, True, "all values finite", param=p.param,
                                        layer=p.layer, value=0.0, limit=0.0, config_key="check.nonfinite"))
                continue
            first, count = p.first_bad_snapshot, p.first_bad_count
            what = f"{count} non-finite value(s)" if count else "a non-finite norm"
            findings.append(Finding(
                self.name, severity, False,
                f"{what} first at snapshot {first}, in {p.bad_snapshots} of {p.snapshots} snapshot(s)",
                param=p.param, layer=p.layer, value=float(count), limit=0.0, snapshot=first,
                path=_path_at(trajectory, first), config_key="check.nonfinite",
            ))
        return findings


@dataclass(frozen=True)
class GrowthRule:
    """Per-parameter norm ratio (`normscope.analysis.weights.ParamGrowth`) must stay within [min_growth, max_growth].

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
        findings = []
        for p in context.weights(trajectory).growth:
            if not p.measurable:
                why = "fewer than two snapshots" if p.snapshots < 2 else "non-finite norms"
                findings.append(Finding(self.name, severity, p.snapshots < 2 and p.finite,
                                        f"not measurable: {why}", param=p.param, layer=p.layer,
                                        limit=self.limit, config_key=key))
                continue
            value, snapshot = p.extreme(self.bound, self.measure)
            ok = value <= self.limit if self.bound == "max" else value >= self.limit
            relation = ("<=" if ok else ">") if self.bound == "max" else (">=" if ok else "<")
            what = "grew" if value >= 1 else "shrank"
            message = (f"norm {what} x{_fmt(value)} (snapshot {snapshot} vs first), {relation} "
                       f"{'max' if self.bound == 'max' else 'min'} x{_fmt(self.limit)}")
            findings.append(Finding(self.name, severity, ok, message, param=p.param, layer=p.layer,
                                    value=value, limit=self.limit, snapshot=snapshot,
                                    path=_path_at(trajectory, snapshot), config_key=key))
        return findings


@dataclass(frozen=True)
class TotalNormRule:
    """The total norm over `kinds` must stay within [min_total_norm, max_total_norm] in every snapshot."""

    minimum: float | None
    maximum: float | None
    name: str = "total_norm"

    def evaluate(self, trajectory: Trajectory, context: CheckContext) -> list[Finding]:
        severity = context.severity_of(self.name)
        weights = context.weights(trajectory)
        totals = np.asarray(weights.total_norms, dtype=float)
        kinds = ",".join(context.config.kinds) or "all"
        findings = []
        for bound, limit in (("min", self.minimum), ("max", self.maximum)):
            if limit is None:
                continue
            key = f"check.{bound}_total_norm"
            scope = f"total norm ({kinds}) {bound}"
            if not totals.size or not np.isfinite(totals).all():
                findings.append(Finding(self.name, severity, False, "total norm is missing or non-finite",
                                        scope=scope, limit=limit, config_key=key))
                continue
            where = int(np.argmin(totals) if bound == "min" else np.argmax(totals))
            at, value = weights.total_snapshots[where], float(totals[where])
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
