"""What every `normscope check` output says alike: the terminal summary, the CLI's stderr notes and the
GitHub job summary take it from here."""

from __future__ import annotations

from normscope.check.findings import CheckResult


def no_limits_note(result: CheckResult) -> str:
    """A check whose only rule is the non-finite one has no limits: say so, or PASSED reads as more."""
    if set(result.rules) - {"nonfinite"}:
        return ""
    return ("no limits are set: only NaN/Inf values were checked. Set limits in [tool.normscope.check] "
            "(normscope.toml or pyproject.toml) or with flags such as --max-growth, --bounce-by-epoch, "
            "--equilibrium-min")
