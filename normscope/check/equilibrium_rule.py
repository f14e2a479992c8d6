"""Equilibrium ratio bounds for scale-invariant layers: measured / predicted angular update.

Reads `normscope.analysis.equilibrium` (on the invariance verdicts of
`normscope.analysis.invariance.classify_invariance`). The ratio checked is the median over the
intervals that are settled (≥ 3 relaxation times into their LR phase); a layer still approaching
equilibrium is not judged yet. A run with no invariant layer at all fails the rule: bounds were asked
for, and losing every normalised layer is itself a change worth stopping for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from normscope.check.findings import CheckContext, Finding
from normscope.errors import BadInputError

if TYPE_CHECKING:  # pragma: no cover
    from normscope.trajectory import Trajectory


@dataclass(frozen=True)
class EquilibriumRule:
    minimum: float | None
    maximum: float | None
    name: str = "equilibrium"

    def evaluate(self, trajectory: Trajectory, context: CheckContext) -> list[Finding]:
        analysis = context.run_analysis(trajectory)
        report = analysis.equilibrium
        if report is None:
            raise BadInputError(f"the equilibrium rule cannot run: {analysis.skipped.get('equilibrium', '')}")
        severity = context.severity_of(self.name)
        key = "check.equilibrium_min_ratio" if self.minimum is not None else "check.equilibrium_max_ratio"
        bounds = f"[{'-' if self.minimum is None else f'{self.minimum:g}'}, " \
                 f"{'-' if self.maximum is None else f'{self.maximum:g}'}]"
        if not report.layers:
            return [Finding(self.name, severity, False,
                            f"no scale-invariant layer to check ({len(report.not_applicable)} not applicable)",
                            scope="scale-invariant layers", config_key=key)]
        findings = []
        for layer in report.layers:
            ratio = layer.settled_ratio
            if not math.isfinite(ratio):
                findings.append(Finding(self.name, severity, True,
                                        f"not judged: {layer.status} ({layer.reason})", param=layer.param,
                                        layer=layer.layer, config_key=key))
                continue
            low = self.minimum is not None and ratio < self.minimum
            high = self.maximum is not None and ratio > self.maximum
            ok = not (low or high)
            verdict = "within" if ok else "below" if low else "above"
            limit = self.minimum if low else self.maximum if high else (self.minimum or self.maximum)
            findings.append(Finding(
                self.name, severity, ok,
                f"angular update {ratio:.3g}x the prediction (median over settled intervals), {verdict} "
                f"{bounds}; now: {layer.status}",
                param=layer.param, layer=layer.layer, value=ratio, limit=limit,
                config_key="check.equilibrium_max_ratio" if high else "check.equilibrium_min_ratio" if low else key,
            ))
        return findings
