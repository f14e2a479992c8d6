"""`normscope check`: rules over a trajectory that make a training run pass or fail in CI."""

from normscope.check.findings import (
           ERROR,
           WARNING,
           CheckContext,
           CheckResult,
           Finding,
           Rule,
)
from normscope.check.runner import RULE_NAMES, build_rules, evaluate_rules, run_check

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
