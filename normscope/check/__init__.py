"""`normscope check`: rules over a trajectory that make a training run pass or fail in CI.

The rules (`normscope.check.rules`) sit below the analysis runner, which holds a run's analysis to
them (`analyze_run(..., check=config)`); `run_check` (`normscope.check.runner`) sits above it, as it
runs that analysis. So this package imports `run_check` when it is first asked for: importing the
rules from the runner must not import the runner back.
"""

from typing import Any

from normscope.check.findings import (
    ERROR,
    WARNING,
    CheckContext,
    CheckResult,
    Finding,
    Rule,
)
from normscope.check.rules import RULE_NAMES, build_rules, evaluate_rules

__all__ = [
    "ERROR",
    "RULE_NAMES",
    "WARNING",
    "CheckContext",
    "CheckResult",
    "Finding",
    "Rule",
    "build_rules",
    "evaluate_rules",
    "run_check",
]


def __getattr__(name: str) -> Any:
    if name == "run_check":
        from normscope.check.runner import run_check  # lazy: the runner imports this package's rules

        return run_check
    raise AttributeError(f"module 'normscope.check' has no attribute {name!r}")
