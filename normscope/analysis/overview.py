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
    invariance: list[Any] = field(default_factory=list)  # InvarianceVerdict per parameter
    equilibrium: Any | None = None  # EquilibriumReport, when asked for
    skipped: dict[str, str] = field(default_factory=dict)  # analysis name -> why it did not run


def overview(
    traj: Trajectory,
    *,
    steps_per_epoch: float | None = None,
    equilibrium: bool = False,
    model_spec: str | None = None,
    overrides: Any | None = None,  # normscope.analysis.equilibrium.HyperparamOverrides
) -> Overview:
    """Summaries, bounces and scale-invariance verdicts; the equilibrium report when `equilibrium`.

    `model_spec` ("package.module:factory") builds the user's model to decide invariance exactly
    (torch.fx + a numerical probe): it imports and runs the user's code, by their choice.
    """
    from normscope.analysis.bounce import analyze_bounces

    skipped: dict[str, str] = {}
    bounces = None
    try:
        bounces = analyze_bounces(traj.table, steps_per_epoch=steps_per_epoch)
    except BadInputError as exc:
        skipped["bounces"] = exc.message
    report = None
    if equilibrium:
        from normscope.analysis.equilibrium import (
            HyperparamOverrides,
            analyze_equilibrium,
        )

        if overrides is None:
            overrides = HyperparamOverrides(steps_per_epoch=steps_per_epoch)
        verdicts, report = analyze_equilibrium(traj, model_spec=model_spec, overrides=overrides)
    else:
        from normscope.analysis.invariance import classify_invariance
        from normscope.analysis.user_model import build_model

        model = build_model(model_spec) if model_spec else None
        verdicts = classify_invariance(traj.table, model=model)
    return Overview(run=summarize_run(traj), params=summarize_params(traj), bounces=bounces,
                    invariance=verdicts, equilibrium=report, skipped=skipped)
