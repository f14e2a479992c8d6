"""From a path and settings to a check result: what `normscope check` does, callable from Python."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from normscope.analysis.runner import RunOptions
from normscope.api import load_with_options
from normscope.check.findings import CheckResult
from normscope.check.rules import build_rules
from normscope.check.runner import run_check
from normscope.config import ResolvedConfig, load_config
from normscope.errors import NormscopeError


@dataclass(frozen=True)
class CheckOutcome:
    result: CheckResult
    resolved: ResolvedConfig
    notes: list[str] = field(default_factory=list)  # the runs' own warnings (ordering, vanished params)


def check_path(
    path: str | os.PathLike[str],
    *,
    config_file: str | os.PathLike[str] | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    steps_per_epoch: float | None = None,
    one_file_per_epoch: bool = False,
    recover_unsafe: bool = False,
    tag_pattern: str | None = None,
) -> CheckOutcome:
    """Resolve the configuration for `path`, load the run (and baseline, with the same options) and
    run the rules on the analysis of the run (`analyze_run` with the check configuration).
    `recover_unsafe` and `tag_pattern` read the runs as `load_trajectory` does with them."""
    resolved = load_config(path, config_file=config_file, flags=flags, environ=environ)
    config = resolved.config
    options = RunOptions(**config.reading(), steps_per_epoch=steps_per_epoch,
                         one_file_per_epoch=one_file_per_epoch)
    rules = build_rules(config.check, with_baseline=bool(config.check.baseline))  # config errors first
    reading = {"recover_unsafe": recover_unsafe, "tag_pattern": tag_pattern}
    trajectory = load_with_options(path, options, **reading)
    baseline = None
    if config.check.baseline:
        try:
            baseline = load_with_options(config.check.baseline, options, **reading)
        except NormscopeError as exc:  # which of the two runs it is, said first
            raise type(exc)(f"baseline ({resolved.origin('check.baseline').describe()}): {exc.message}",
                            exit_code=exc.exit_code) from None
    result = run_check(trajectory, config.check, baseline=baseline, rules=rules, run_path=str(path),
                       baseline_path=config.check.baseline,
                       config_file=str(resolved.file) if resolved.file else None, options=options)
    notes = list(trajectory.warnings) + [f"baseline: {w}" for w in (baseline.warnings if baseline else [])]
    return CheckOutcome(result=result, resolved=resolved, notes=notes)
