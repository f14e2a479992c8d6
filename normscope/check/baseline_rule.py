"""Drift against a baseline run: the regression test for changes to training code.

Both runs' per-parameter norm trajectories are aligned on the best shared time axis (optimizer
step, else epoch, else snapshot position) and compared where both have a snapshot, with numpy's
`isclose` rule: |run - baseline| <= atol + rtol·|baseline|.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from normscope.analysis.weights import selected_rows
from normscope.check.findings import CheckContext, Finding
from normscope.errors import BadInputError

if TYPE_CHECKING:  # pragma: no cover
    from normscope.trajectory import Trajectory


def alignment_axis(run: pd.DataFrame, baseline: pd.DataFrame) -> str:
    """"step" when both runs know every snapshot's step, else "epoch", else "snapshot"."""
    for axis in ("step", "epoch"):
        if not run.empty and not baseline.empty and run[axis].notna().all() and baseline[axis].notna().all():
            return axis
    return "snapshot"


def aligned_norms(run: pd.DataFrame, baseline: pd.DataFrame, axis: str) -> pd.DataFrame:
    """One row per (param, time) present in both runs: columns param, layer, <axis>, snapshot, norm, baseline."""
    left = run[["param", "layer", axis, "snapshot", "norm"]] if axis != "snapshot" else \
        run[["param", "layer", "snapshot", "norm"]]
    right = baseline[["param", axis, "norm"]].rename(columns={"norm": "baseline"})
    left = left.drop_duplicates(["param", axis], keep="last")
    right = right.drop_duplicates(["param", axis], keep="last")
    return left.merge(right, on=["param", axis], how="inner").sort_values(["param", axis])


@dataclass(frozen=True)
class BaselineDriftRule:
    """Each parameter's norm must match the baseline run's within (rtol, atol) at every shared time."""

    rtol: float
    atol: float = 0.0
    name: str = "baseline"

    def evaluate(self, trajectory: Trajectory, context: CheckContext) -> list[Finding]:
        if context.baseline is None:
            raise BadInputError("the baseline rule needs a baseline run (--baseline PATH)")
        severity = context.severity_of(self.name)
        kinds = context.config.kinds
        run = selected_rows(trajectory, kinds)
        base = selected_rows(context.baseline, kinds)
        axis = alignment_axis(run, base)
        pairs = aligned_norms(run, base, axis)
        if pairs.empty and not run.empty and not base.empty:
            raise BadInputError(
                f"the run and the baseline share no {axis} with a common parameter; nothing to compare")
        findings: list[Finding] = []
        run_params, base_params = list(dict.fromkeys(run["param"])), set(base["param"])
        for param in run_params:
            if param not in base_params:
                findings.append(Finding(self.name, severity, False, "parameter is not in the baseline run",
                                        param=param, layer=str(run.loc[run["param"] == param, "layer"].iloc[0]),
                                        limit=self.rtol, config_key="check.baseline_rtol"))
        for param in sorted(base_params - set(run_params)):
            findings.append(Finding(self.name, severity, False, "baseline parameter is missing from this run",
                                    param=param, limit=self.rtol, config_key="check.baseline_rtol"))
        for param, group in pairs.groupby("param", sort=False):
            findings.append(self._compare(str(param), group, axis, severity, trajectory))
        return findings

    def _compare(self, param: str, group: pd.DataFrame, axis: str, severity: str,
                 trajectory: Trajectory) -> Finding:
        now, then = group["norm"].to_numpy(dtype=float), group["baseline"].to_numpy(dtype=float)
        layer = str(group["layer"].iloc[0])
        with np.errstate(divide="ignore", invalid="ignore"):
            excess = np.abs(now - then) - (self.atol + self.rtol * np.abs(then))
            relative = np.abs(now - then) / np.abs(then)
        excess = np.where(np.isnan(excess), np.inf, excess)  # a NaN on either side is drift
        worst = int(np.argmax(excess))
        ok = bool(excess[worst] <= 0)
        snapshot = int(group["snapshot"].iloc[worst])
        at = group[axis].iloc[worst]
        value = float(relative[worst])
        message = (f"largest difference {value:.3g} relative ({now[worst]:.6g} vs {then[worst]:.6g}) at "
                   f"{axis} {at} over {len(group)} shared point(s); allowed rtol {self.rtol:g}"
                   + (f" + atol {self.atol:g}" if self.atol else ""))
        metas = trajectory.snapshots
        return Finding(self.name, severity, ok, message, param=param, layer=layer, value=value,
                       limit=self.rtol, snapshot=snapshot,
                       path=metas[snapshot].path if snapshot < len(metas) else None,
                       config_key="check.baseline_rtol")
