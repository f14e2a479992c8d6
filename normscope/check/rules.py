"""Which rules a configuration switches on, and holding a run's analysis to them.

The analysis runner calls `evaluate_rules` (`analyze_run(..., check=config)`); `normscope.check.runner`
runs a whole check. Nothing here runs an analysis, so the runner can import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from normscope.check.baseline_rule import BaselineDriftRule
from normscope.check.bounce_rule import BounceRule
from normscope.check.equilibrium_rule import EquilibriumRule
from normscope.check.findings import CheckContext, CheckResult, Finding, Rule
from normscope.check.weight_rules import GrowthRule, NonFiniteRule, TotalNormRule
from normscope.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from normscope.config import CheckConfig
    from normscope.trajectory import Trajectory

RULE_NAMES = ("nonfinite", "growth", "collapse", "total_norm", "bounce", "equilibrium", "baseline")


def build_rules(config: CheckConfig, *, with_baseline: bool) -> list[Rule]:
    """The rules `config` asks for, in a fixed order. A rule whose limit is None is off."""
    unknown = sorted(set(config.warn) - set(RULE_NAMES))
    if unknown:
        raise ConfigError(f"key 'check.warn': unknown rule(s) {', '.join(unknown)} "
                          f"(known: {', '.join(RULE_NAMES)})")
    rules: list[Rule] = []
    if config.nonfinite:
        rules.append(NonFiniteRule())
    if config.max_growth is not None:
        rules.append(GrowthRule("max", config.max_growth, config.growth_measure))
    if config.min_growth is not None:
        rules.append(GrowthRule("min", config.min_growth, config.growth_measure))
    if config.min_total_norm is not None or config.max_total_norm is not None:
        rules.append(TotalNormRule(config.min_total_norm, config.max_total_norm))
    rules.extend(_analysis_rules(config))
    if with_baseline:
        rules.append(BaselineDriftRule(config.baseline_rtol, config.baseline_atol))
    return rules


def _analysis_rules(config: CheckConfig) -> list[Rule]:
    """Rules that read the bounce and equilibrium analyses."""
    rules: list[Rule] = []
    if config.bounce_by_epoch is not None:
        rules.append(BounceRule(config.bounce_by_epoch))
    if config.equilibrium_min_ratio is not None or config.equilibrium_max_ratio is not None:
        rules.append(EquilibriumRule(config.equilibrium_min_ratio, config.equilibrium_max_ratio))
    return rules


def evaluate_rules(
    trajectory: Trajectory,
    config: CheckConfig,
    analysis: Any,  # normscope.analysis.runner.RunAnalysis of `trajectory`
    *,
    baseline: Trajectory | None = None,
    rules: Sequence[Rule] | None = None,
    options: Any = None,
) -> CheckResult:
    """Hold the numbers of `analysis` to every rule (those `config` switches on unless `rules` is
    given). The analysis runner calls this; the rules compute no analysis of their own."""
    if rules is None:
        rules = build_rules(config, with_baseline=baseline is not None)
    context = CheckContext(config=config, baseline=baseline, options=options, run=analysis)
    findings: list[Finding] = []
    for rule in rules:
        findings.extend(rule.evaluate(trajectory, context))
    return CheckResult(findings=tuple(findings), rules=tuple(rule.name for rule in rules),
                       run_path=trajectory.root)
