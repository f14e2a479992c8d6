"""Everything `normscope analyze` shows, computed in one call from the trajectory table.

The CLI renders an `Overview`; Python users get the same object from `overview(traj)`.
An analysis that cannot run on this trajectory (too few epochs, no epoch information) is left
out with the reason, rather than failing the whole analysis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from normscope.analysis.summary import (
    ParamSummary,
    RunSummary,
    summarize_params,
    summarize_run,
)
from normscope.errors import BadInputError
from normscope.trajectory import Trajectory


@dataclass(frozen=True)
class Overview:
    run: RunSummary
    params: list[ParamSummary]
    bounces: Any | None = None  # normscope.analysis.bounce.BounceAnalysis
    skipped: dict[str, str] = field(default_factory=dict)  # analysis name -> why it did not run


def overview(traj: Trajectory, *, steps_per_epoch: float | None = None) -> Overview:
    from normscope.analysis.bounce import analyze_bounces

    skipped: dict[str, str] = {}
    bounces = None
    try:
        bounces = analyze_bounces(traj.table, steps_per_epoch=steps_per_epoch)
    except BadInputError as exc:
        skipped["bounces"] = exc.message
    return Overview(run=summarize_run(traj), params=summarize_params(traj), bounces=bounces,
                    skipped=skipped)
