"""The one analysis runner: every analysis of a run, run once, with one skip logic, in one result.

`analyze_run(trajectory, options)` computes the summaries, the bounce analysis, the scale-invariance
verdicts, the equilibrium report and the learning-rate recommendation. Each command renders the
parts it shows from the same `RunAnalysis`, so a quantity that two views show is the same number.
An analysis that cannot run on this trajectory is left out with the reason (`skipped`), never fatal.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from normscope.analysis.summary import (
    ParamSummary,
    RunSummary,
    summarize_params,
    summarize_run,
)
from normscope.errors import NormscopeError
from normscope.trajectory import Trajectory

# Names of the analyses, as `RunAnalysis.skipped` keys them.
BOUNCES = "bounces"
EQUILIBRIUM = "equilibrium"
RECOMMENDATION = "recommendation"


@dataclass(frozen=True)
class RunOptions:
    """What the commands share: which tensors and snapshots to read, where, and what the run's
    checkpoints do not say (epochs, budget, model, hyper-parameters)."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    every: int = 1
    device: str = "auto"
    steps_per_epoch: float | None = None
    total_epochs: int | None = None
    model_spec: str | None = None  # "package.module:factory": imports and runs the user's code
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float | None = None
    beta1: float | None = None
    probe: bool = True  # numerical homogeneity probe for the invariance verdicts (needs --model)

    def hyperparam_overrides(self, trajectory: Trajectory):
        """The equilibrium analysis's overrides for this run. Which LR governs an interval depends on
        the source: a tracker record holds the LR its own step used; a checkpoint usually the next
        epoch's (the scheduler stepped before the save)."""
        from normscope.analysis.equilibrium import HyperparamOverrides

        return HyperparamOverrides(optimizer=self.optimizer, lr=self.lr, weight_decay=self.weight_decay,
                                   momentum=self.momentum, beta1=self.beta1,
                                   steps_per_epoch=self.steps_per_epoch,
                                   lr_at="end" if trajectory.layout == "jsonl" else "start")


@dataclass(frozen=True)
class RunAnalysis:
    """Every analysis of one run. `None` parts did not run; `skipped` says why."""

    run: RunSummary
    params: list[ParamSummary]
    invariance: list[Any] = field(default_factory=list)  # InvarianceVerdict per parameter
    bounces: Any | None = None  # normscope.analysis.bounce.BounceAnalysis
    equilibrium: Any | None = None  # normscope.analysis.equilibrium.EquilibriumReport
    recommendation: Any | None = None  # normscope.analysis.recommend.Recommendation
    # per-neuron equilibrium (`row_equilibrium.RowInterval` per tensor and interval), only for a
    # trajectory read at row granularity
    rows: tuple[Any, ...] | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # analysis name -> why it did not run

    def equilibrium_layer(self, param: str):
        """The equilibrium analysis of `param` (a scale-invariant parameter), else None."""
        if self.equilibrium is None:
            return None
        return next((layer for layer in self.equilibrium.layers if layer.param == param), None)


def analyze_run(trajectory: Trajectory, options: RunOptions = RunOptions(), *,
                equilibrium: bool = True, recommendation: bool = True) -> RunAnalysis:
    """Run every analysis of `trajectory` once. `equilibrium` / `recommendation` False leave those
    out (a view that does not show them need not pay for them)."""
    from normscope.analysis.bounce import analyze_bounces
    from normscope.analysis.equilibrium import equilibrium_for, scale_invariance

    skipped: dict[str, str] = {}
    result = RunAnalysis(run=summarize_run(trajectory), params=summarize_params(trajectory), skipped=skipped)
    if trajectory.table.empty:
        return result
    try:
        bounces = analyze_bounces(trajectory.table, steps_per_epoch=options.steps_per_epoch)
    except NormscopeError as exc:
        bounces, skipped[BOUNCES] = None, exc.message
    verdicts = scale_invariance(trajectory, model_spec=options.model_spec, probe=options.probe)
    report = None
    if equilibrium:
        try:
            report = equilibrium_for(trajectory, verdicts, options.hyperparam_overrides(trajectory))
        except NormscopeError as exc:
            skipped[EQUILIBRIUM] = exc.message
    rec = None
    if recommendation:
        from normscope.analysis.recommend import recommend_table

        try:
            rec = recommend_table(trajectory.table, steps_per_epoch=options.steps_per_epoch,
                                  total_epochs=options.total_epochs)
        except NormscopeError as exc:
            skipped[RECOMMENDATION] = exc.message
    rows = None
    if trajectory.granularity == "row":
        from normscope.analysis.row_equilibrium import row_report

        rows = row_report(trajectory, optimizer=options.optimizer)
    return replace(result, invariance=verdicts, bounces=bounces, equilibrium=report, recommendation=rec,
                   rows=rows)


__all__ = ["BOUNCES", "EQUILIBRIUM", "RECOMMENDATION", "RunAnalysis", "RunOptions", "analyze_run"]
