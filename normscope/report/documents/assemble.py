"""The full report of a run: the trajectory sections plus every analysis that applies to it.

An analysis that cannot run on this run (too few epochs, no epochs recorded, no invariant layer) is
left out with its one-line reason in a "Not shown" section, instead of failing the report.
"""

from __future__ import annotations

import io
from pathlib import Path

from normscope.analysis.runner import (
    EQUILIBRIUM,
    RECOMMENDATION,
    RunAnalysis,
    RunOptions,
    analyze_run,
)
from normscope.report.documents.build import build_report
from normscope.report.documents.document import Bullets, Figure, Report, Section
from normscope.report.documents.equilibrium_section import equilibrium_section, invariance_section
from normscope.report.documents.recommend_section import recommendation_view
from normscope.report.plots.bounce_plot import plot_recommendation
from normscope.report.plots.trajectory_plots import Marker
from normscope.trajectory import Trajectory


def _recommendation_png(rec, title: str) -> bytes:
    buffer = io.BytesIO()
    plot_recommendation(rec, buffer, title=title, dpi=100)
    return buffer.getvalue()


def _invariance_sections(analysis: RunAnalysis, skipped: list[str]) -> list[Section]:
    """Scale-invariance verdicts (with evidence) and the equilibrium of the invariant layers."""
    if analysis.equilibrium is None:
        skipped.append(f"scale invariance and equilibrium: {analysis.skipped.get(EQUILIBRIUM, 'not analysed')}")
        return []
    return [invariance_section(analysis.invariance), equilibrium_section(analysis.equilibrium)]


def run_report(trajectory: Trajectory, options: RunOptions | None = None,
               analysis: RunAnalysis | None = None) -> Report:
    """Build the report `normscope report` writes (callable from Python), from `analysis` (the one
    `analyze_run` gives; computed here when not given)."""
    if analysis is None:
        analysis = analyze_run(trajectory, options or RunOptions())
    sections: list[Section] = []
    figures: list[Figure] = []
    markers: tuple[Marker, ...] = ()
    schedule: tuple[tuple[float, float], ...] = ()
    skipped: list[str] = []
    name = Path(trajectory.root).name or trajectory.root
    rec = analysis.recommendation
    if rec is None:
        skipped.append("bounce and learning-rate recommendation: "
                       f"{analysis.skipped.get(RECOMMENDATION, 'not analysed')}")
    else:
        view = recommendation_view(rec)
        sections.append(view.section)
        markers, schedule = view.markers, view.schedule
        figures.append(Figure("recommendation", "Weight norm, bounces and the recommended decays",
                              _recommendation_png(rec, name),
                              "Σ‖w‖² at the end of each epoch, the bounces found, where ABEL (exact and robust) "
                              "would decay, and the LR schedule that makes."))
    sections.extend(_invariance_sections(analysis, skipped))
    if skipped:
        sections.append(Section("Not shown", (Bullets(tuple(skipped)),)))
    return build_report(trajectory, analysis_sections=sections, extra_figures=figures, markers=markers,
                        recommended_lr=schedule)
