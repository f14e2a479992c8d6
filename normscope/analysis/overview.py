"""Everything `normscope analyze` shows: `analyze_run` without the recommendation.

Kept for the Python API (`overview(traj)`); the CLI and every other view go through
`normscope.analysis.runner.analyze_run`, so they share one result.
"""

from __future__ import annotations

from typing import Any

from normscope.analysis.runner import RunAnalysis, RunOptions, analyze_run
from normscope.trajectory import Trajectory

Overview = RunAnalysis


def overview(
    traj: Trajectory,
    *,
    steps_per_epoch: float | None = None,
    equilibrium: bool = False,
    model_spec: str | None = None,
    overrides: Any | None = None,  # normscope.analysis.equilibrium.HyperparamOverrides
) -> RunAnalysis:
    """Summaries, bounces and scale-invariance verdicts; the equilibrium report when `equilibrium`.

    `model_spec` ("package.module:factory") builds the user's model to decide invariance exactly
    (torch.fx + a numerical probe): it imports and runs the user's code, by their choice.
    """
    given = {} if overrides is None else {
        name: getattr(overrides, name) for name in ("optimizer", "lr", "weight_decay", "momentum", "beta1")}
    if overrides is not None and overrides.steps_per_epoch is not None:
        steps_per_epoch = steps_per_epoch or overrides.steps_per_epoch
    options = RunOptions(steps_per_epoch=steps_per_epoch, model_spec=model_spec, **given)
    return analyze_run(traj, options, equilibrium=equilibrium, recommendation=False)
