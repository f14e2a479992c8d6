"""A bounce of the total squared weight norm expected by epoch N — or expected never ("none").

Reads the bounce analysis of the run (`RunAnalysis.bounces`, from the analysis runner: the
noise-robust detector `normscope.analysis.bounce.detect_bounces` on the end-of-epoch series of the
checked kinds), the numbers `normscope analyze` shows. A bounce counts from the epoch its rise is
confirmed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from normscope.analysis.skipped import BOUNCES
from normscope.check.findings import CheckContext, Finding
from normscope.errors import BadInputError

if TYPE_CHECKING:  # pragma: no cover
    from normscope.trajectory import Trajectory

EXPECT_NONE = "none"


@dataclass(frozen=True)
class BounceRule:
    """`by_epoch` a number: a bounce must be confirmed by then; "none": no bounce may be detected."""

    by_epoch: float | str
    name: str = "bounce"

    def evaluate(self, trajectory: Trajectory, context: CheckContext) -> list[Finding]:
        analysis = context.run_analysis(trajectory)
        if analysis.bounces is None:
            raise BadInputError(analysis.skipped.get(BOUNCES, "the bounce analysis did not run"))
        series, detection = analysis.bounces.series, analysis.bounces.robust
        severity = context.severity_of(self.name)
        scope = f"bounce of total norm ({', '.join(series.include_kinds)})"
        confirmed = [b.confirmed_epoch for b in detection.bounces]
        found = ", ".join(f"minimum at epoch {b.minimum_epoch} (confirmed {b.confirmed_epoch}, "
                          f"depth {b.depth:.2%}, confidence {b.confidence:.3f})" for b in detection.bounces)
        last = series.epochs[-1]
        common = {"scope": scope, "config_key": "check.bounce_by_epoch"}
        if self.by_epoch == EXPECT_NONE:
            ok = not detection.bounces
            message = (f"no bounce in epochs {series.epochs[0]}–{last}" if ok
                       else f"expected no bounce, found {len(confirmed)}: {found}")
            return [Finding(self.name, severity, ok, message, value=float(confirmed[0]) if confirmed else None,
                            **common)]
        deadline = float(self.by_epoch)
        in_time = [e for e in confirmed if e <= deadline]
        snapshot = None
        if in_time:
            snapshot = series.snapshots[series.epochs.index(in_time[0])] if in_time[0] in series.epochs else None
            return [Finding(self.name, severity, True, f"bounce by epoch {deadline:g}: {found}",
                            value=float(in_time[0]), limit=deadline, snapshot=snapshot, **common)]
        if last < deadline:
            return [Finding(self.name, severity, True,
                            f"no bounce yet, but the run has only reached epoch {last} of the {deadline:g} allowed",
                            limit=deadline, **common)]
        late = f"; later: {found}" if confirmed else ""
        return [Finding(self.name, severity, False, f"no bounce confirmed by epoch {deadline:g}{late}",
                        value=float(confirmed[0]) if confirmed else None, limit=deadline, **common)]
