"""A whole check of a run: its analysis with the check configuration, held to the rules."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from normscope.analysis.runner import analyze_run, check_options
from normscope.check.findings import CheckResult, Rule
from normscope.check.rules import build_rules

if TYPE_CHECKING:  # pragma: no cover
    from normscope.config import CheckConfig
    from normscope.trajectory import Trajectory


def run_check(
    trajectory: Trajectory,
    config: CheckConfig,
    *,
    baseline: Trajectory | None = None,
    rules: Sequence[Rule] | None = None,
    run_path: str = "",
    baseline_path: str | None = None,
    config_file: str | None = None,
    options: Any = None,  # normscope.analysis.runner.RunOptions
) -> CheckResult:
    """Evaluate every rule (those `config` switches on unless `rules` is given) on `trajectory`:
    `analyze_run` with the check configuration, whose `check` part this is."""
    if rules is None:
        rules = build_rules(config, with_baseline=baseline is not None)
    analysis = analyze_run(trajectory, check_options(config, options), recommendation=False,
                           equilibrium=any(rule.name == "equilibrium" for rule in rules),
                           check=config, baseline=baseline, rules=rules)
    return replace(analysis.check, run_path=run_path or trajectory.root, baseline_path=baseline_path,
                   config_file=config_file)
