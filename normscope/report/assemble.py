"""The full report of a run: the trajectory sections plus every analysis that applies to it."""

from __future__ import annotations

from normscope.report.build import build_report
from normscope.report.document import Report
from normscope.trajectory import Trajectory


def run_report(trajectory: Trajectory) -> Report:
    """Build the report `normscope report` writes (callable from Python)."""
    return build_report(trajectory)
