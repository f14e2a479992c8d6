"""The one analysis runner: every analysis of a run, run once, with one skip logic, in one result.

`analyze_run(trajectory, options)` computes the summaries, the bounce analysis, the scale-invariance
verdicts, the equilibrium report, the learning-rate recommendation (with ABEL's premise and, when
asked, its TEXP equivalent), the live view's latest state and, given a check configuration, the
weight rules' numbers and the check's findings. Each command renders the parts it shows from the
same `RunAnalysis`, so a quantity that two views show is the same number. An analysis that cannot
run on this trajectory is left out with the reason (`skipped`), never fatal.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from normscope.analysis.bounce import bounces_of_series
from normscope.analysis.epochs import epoch_series
from normscope.analysis.equilibrium import equilibrium_for, scale_invariance
from normscope.analysis.options import RunOptions
from normscope.analysis.skipped import BOUNCES, EQUILIBRIUM, RECOMMENDATION, TEXP
from normscope.analysis.summary import (
    ParamSummary,
    RunSummary,
    summarize_params,
    summarize_run,
)
from normscope.errors import NormscopeError
from normscope.trajectory import Trajectory


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
    premise: Any | None = None  # normscope.analysis.premise.Premise of the recommendation
    texp: Any | None = None  # normscope.lr_schedules.TexpSchedule, with `RunOptions.texp`
    live: Any | None = None  # normscope.live.frame.LiveFrame: the latest state, what `watch` shows
    # the weight rules' numbers (normscope.analysis.weights.WeightStats) and the check's findings
    # (normscope.check.CheckResult), given a check configuration
    weights: Any | None = None
    check: Any | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # analysis name -> why it did not run

    def equilibrium_layer(self, param: str):
        """The equilibrium analysis of `param` (a scale-invariant parameter), else None."""
        if self.equilibrium is None:
            return None
        return next((layer for layer in self.equilibrium.layers if layer.param == param), None)


def analyze_run(trajectory: Trajectory, options: RunOptions = RunOptions(), *,
                equilibrium: bool = True, recommendation: bool = True, live: bool = True, check: Any = None,
                baseline: Trajectory | None = None, rules: Any = None) -> RunAnalysis:
    """Run every analysis of `trajectory` once. `equilibrium` / `recommendation` / `live` False
    leave those out (a view that does not show them need not pay for them). `check` (a `CheckConfig`) adds the
    weight rules' numbers over its kinds and the findings of its rules (or of `rules`), against
    `baseline` where one is given."""
    skipped: dict[str, str] = {}
    result = RunAnalysis(run=summarize_run(trajectory), params=summarize_params(trajectory), skipped=skipped)
    if trajectory.table.empty:
        result = _with_live(result, trajectory, options, live)
        return _with_check(result, trajectory, options, check, baseline, rules)
    kinds = options.kinds or None
    # the end-of-epoch series, once for the bounces and the advice alike (the aggregation is the
    # larger part of both on a run of a few hundred tensors)
    series = bounces = None
    try:
        series = epoch_series(trajectory.table, include_kinds=kinds, steps_per_epoch=options.steps_per_epoch)
        bounces = bounces_of_series(series)
    except NormscopeError as exc:
        skipped[BOUNCES] = exc.message
    verdicts = scale_invariance(trajectory, model_spec=options.model_spec, probe=options.probe)
    report = None
    if equilibrium:
        try:
            report = equilibrium_for(trajectory, verdicts, options.hyperparam_overrides(trajectory))
        except NormscopeError as exc:
            skipped[EQUILIBRIUM] = exc.message
    rec = premise = texp = None
    if recommendation:
        # lazy: the analyses a view does not show are not imported either
        from normscope.analysis.premise import abel_premise
        from normscope.analysis.recommend import recommend

        if series is None:  # the table has no series to advise on: the bounces' reason is its
            skipped[RECOMMENDATION] = skipped[BOUNCES]
        else:
            try:
                rec = recommend(series, lr=options.base_lr, decay_factor=options.decay_factor,
                                min_lr=options.min_lr, total_epochs=options.total_epochs)
            except NormscopeError as exc:
                skipped[RECOMMENDATION] = exc.message
        if rec is not None:
            premise = abel_premise(rec, verdicts)
            if options.texp:
                texp, why = texp_equivalent(rec)
                if why:
                    skipped[TEXP] = why
    rows = None
    if trajectory.granularity == "row":
        from normscope.analysis.row_equilibrium import row_report  # lazy: a row-granularity run only

        rows = row_report(trajectory, optimizer=options.optimizer)
    result = replace(result, invariance=verdicts, bounces=bounces, equilibrium=report, recommendation=rec,
                     premise=premise, texp=texp, rows=rows)
    result = _with_live(result, trajectory, options, live,
                        (rec, skipped.get(RECOMMENDATION)) if recommendation else None)
    return _with_check(result, trajectory, options, check, baseline, rules)


def _with_live(result: RunAnalysis, trajectory: Trajectory, options: RunOptions, live: bool,
               advice_from: tuple[Any, str | None] | None = None) -> RunAnalysis:
    """`result` with the frame `watch` shows, when `live`; `advice_from` is the recommendation and
    why it was skipped, for the frame's advice lines (None: no advice)."""
    if not live:
        return result
    from normscope.live.frame import advice_lines, frame_of  # lazy: for the views that show the frame

    advice = advice_lines(*advice_from) if advice_from is not None else ()
    return replace(result, live=frame_of(trajectory, result, recent=options.recent, advice=advice))


def _with_check(result: RunAnalysis, trajectory: Trajectory, options: RunOptions, check: Any,
                baseline: Trajectory | None, rules: Any) -> RunAnalysis:
    """`result` with the weight rules' numbers and the check's findings, when `check` is given."""
    if check is None:
        return result
    # lazy: the check's rules and numbers, for `check` only
    from normscope.analysis.weights import weight_stats
    from normscope.check.rules import evaluate_rules

    result = replace(result, weights=weight_stats(trajectory, tuple(check.kinds)))
    return replace(result, check=evaluate_rules(trajectory, check, result, baseline=baseline, rules=rules,
                                                options=options))


def check_options(config: Any, options: RunOptions | None = None) -> RunOptions:
    """`options` for a check under `config` (a `CheckConfig`): its bounce analysis reads the kinds
    the check's rules read."""
    return replace(options or RunOptions(), kinds=tuple(config.kinds))


def texp_equivalent(rec) -> tuple[Any | None, str | None]:
    """The TEXP equivalent of the recommended schedule, or None and why it does not apply here (an
    optional part of the answer: the recommendation stands without it)."""
    s = rec.series
    if s.optimizer and not s.optimizer.upper().startswith("SGD"):
        return None, f"the TEXP equivalence holds for SGD (with momentum); this run used {s.optimizer}"
    if not s.steps_per_epoch:
        return None, "it needs steps per epoch: pass --steps-per-epoch N"
    if not (s.weight_decay == s.weight_decay and s.weight_decay > 0):
        return None, "it needs the run's weight decay, and the checkpoints record none"
    from normscope.lr_schedules import texp_schedule  # lazy: with --texp only

    momentum = s.momentum if s.momentum == s.momentum else 0.0
    return texp_schedule(rec.schedule, round(s.steps_per_epoch), s.weight_decay, momentum), None


__all__ = ["BOUNCES", "EQUILIBRIUM", "RECOMMENDATION", "TEXP", "RunAnalysis", "RunOptions", "analyze_run",
           "check_options", "texp_equivalent"]
