"""The seam between check rules and their outputs: one `Finding` per rule × parameter (or run).

A rule is a small object with a `name` and `evaluate(trajectory, context) -> list[Finding]`. It
reports passing cases too, so JUnit has one test case per rule × layer and a reader sees what was
checked, not only what failed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from normscope.analysis.weights import weight_stats
from normscope.errors import EXIT_OK, EXIT_VIOLATIONS

if TYPE_CHECKING:  # pragma: no cover
    from normscope.config import CheckConfig
    from normscope.trajectory import Trajectory

ERROR = "error"
WARNING = "warning"
SEVERITIES = (ERROR, WARNING)

PASS = "pass"  # Finding.status values
FAIL = "fail"


@dataclass(frozen=True)
class Finding:
    """The outcome of one rule on one parameter (or on the run as a whole: param None)."""

    rule: str
    severity: str  # ERROR or WARNING: what a failure of this rule means
    passed: bool
    message: str
    param: str | None = None
    layer: str | None = None
    value: float | None = None  # the measured quantity
    limit: float | None = None  # the bound it was held to
    snapshot: int | None = None  # where it happened (0-based, time order), when one place is meant
    path: str | None = None  # that snapshot's file or directory
    config_key: str | None = None  # the config key that set the limit, e.g. "check.max_growth"
    scope: str | None = None  # what a run-wide finding (param None) is about, e.g. "total norm max"

    @property
    def status(self) -> str:
        """"pass", "warning" or "error"."""
        return PASS if self.passed else self.severity

    @property
    def subject(self) -> str:
        """What the finding is about: the parameter, or the run-wide quantity."""
        if self.param is not None:
            return self.param
        return f"run: {self.scope}" if self.scope else "run"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule, "status": self.status, "severity": self.severity, "passed": self.passed,
            "param": self.param, "layer": self.layer, "message": self.message,
            "value": self.value, "limit": self.limit, "snapshot": self.snapshot, "path": self.path,
            "config_key": self.config_key, "scope": self.scope,
        }


@dataclass
class CheckContext:
    """What rules may need besides the trajectory: the settings, a baseline run, and the run's
    analysis (`RunAnalysis`, from the analysis runner), whose numbers the rules compare with limits."""

    config: CheckConfig
    baseline: Trajectory | None = None
    options: Any = None  # normscope.analysis.runner.RunOptions: epochs, model, hyper-parameter overrides
    run: Any = None  # normscope.analysis.runner.RunAnalysis of the checked run

    def run_analysis(self, trajectory: Trajectory) -> Any:
        """The analysis of the checked run (`analyze_run` with the check configuration): the numbers
        every other view shows. The runner that calls the rules gives it; no rule computes one.

        Raises:
            ValueError: when the context was made without the run's analysis.
        """
        if self.run is None:
            raise ValueError("a check context needs the run's analysis (analyze_run(..., check=config))")
        return self.run

    def weights(self, trajectory: Trajectory) -> Any:
        """The weight rules' numbers (`normscope.analysis.weights.WeightStats`) of the checked run."""
        analysis = self.run_analysis(trajectory)
        if analysis.weights is None:
            self.run = analysis = replace(analysis, weights=weight_stats(trajectory, self.config.kinds))
        return analysis.weights

    def severity_of(self, rule: str) -> str:
        return WARNING if rule in self.config.warn else ERROR


@runtime_checkable
class Rule(Protocol):
    """One check. `name` is what `check.warn` and the outputs call it."""

    name: str

    def evaluate(self, trajectory: Trajectory, context: CheckContext) -> list[Finding]: ...


@dataclass(frozen=True)
class CheckResult:
    """All findings of one `normscope check`, and what they add up to."""

    findings: tuple[Finding, ...]
    rules: tuple[str, ...]  # the rules that ran, in order
    run_path: str = ""
    baseline_path: str | None = None
    config_file: str | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.status == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.status == WARNING]

    @property
    def passed(self) -> bool:
        return not self.errors

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.passed else EXIT_VIOLATIONS

    def counts(self) -> dict[str, int]:
        return {
            "checks": len(self.findings),
            "passed": sum(f.passed for f in self.findings),
            "warnings": len(self.warnings),
            "errors": len(self.errors),
        }
