"""Fill the report document from a trajectory and the analyses: what `normscope report` shows."""

from __future__ import annotations

import math
from collections.abc import Sequence

from normscope.analysis.summary import (
    ParamSummary,
    RunSummary,
    summarize_params,
    summarize_run,
)
from normscope.report.documents.document import (
    Block,
    Bullets,
    Figure,
    Paragraph,
    Report,
    Section,
    Table,
)
from normscope.report.plots import trajectory_plots as plots
from normscope.report.quantities import angle, not_shown_notes, percent_change, when
from normscope.snapshot import SnapshotMeta
from normscope.trajectory import Trajectory


def _num(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}"


def _time(step: int | None, epoch: float | None) -> str:
    parts = []
    if epoch is not None:
        parts.append(f"epoch {_num(epoch)}")
    if step is not None:
        parts.append(f"step {step}")
    return ", ".join(parts) or "–"


def _settings(meta: SnapshotMeta) -> tuple:
    return (meta.optimizer, tuple((g.lr, g.weight_decay, g.momentum, g.betas, g.eps, g.nesterov,
                                   g.decoupled_weight_decay, len(g.params)) for g in meta.param_groups))


def hyperparameter_table(snapshots: Sequence[SnapshotMeta]) -> Table | None:
    """One row per param group per stretch of snapshots with the same optimizer settings.

    Where the settings were read from (`hyperparams_source`) names each file, so it does not split a
    stretch; the first snapshot's source is shown.
    """
    rows: list[tuple[str, ...]] = []
    start = 0
    for index in range(1, len(snapshots) + 1):
        if index < len(snapshots) and _settings(snapshots[index]) == _settings(snapshots[start]):
            continue
        meta = snapshots[start]
        span = f"{start}" if index - 1 == start else f"{start}–{index - 1}"
        for number, g in enumerate(meta.param_groups):
            betas = "–" if g.betas is None else f"{_num(g.betas[0])}, {_num(g.betas[1])}"
            rows.append((span, meta.optimizer or "?", str(number), str(len(g.params)), _num(g.lr),
                         _num(g.weight_decay), _num(g.momentum), betas, meta.hyperparams_source or "–"))
        start = index
    if not rows:
        return None
    return Table(("snapshots", "optimizer", "group", "params", "lr", "weight decay", "momentum", "betas",
                  "source"), tuple(rows), numeric=(False, False, True, True, True, True, True, False, False))


def run_section(trajectory: Trajectory, run: RunSummary) -> Section:
    first, last = (trajectory.snapshots[0], trajectory.snapshots[-1]) if trajectory.snapshots else (None, None)
    facts = [
        f"path: {trajectory.root}",
        f"layout: {trajectory.layout}"
        + (f" (saved by {trajectory.framework})" if trajectory.framework else "")
        + f"; time order from: {trajectory.ordering}",
        (f"{run.snapshots} snapshots, from {_time(run.first_step, run.first_epoch)} "
         f"to {_time(run.last_step, run.last_epoch)}"),
        f"{run.params} tensors, {run.numel:,} elements per snapshot",
        (f"total norm over {', '.join(run.total_kinds)} tensors: {_num(run.total_norm_first)} first, "
         f"{_num(run.total_norm_min)} lowest (snapshot {run.total_norm_min_snapshot}), "
         f"{_num(run.total_norm_last)} last"),
    ]
    if first is not None and last is not None:
        facts.append(f"first snapshot: {first.path}; last: {last.path}")
    blocks: list[Block] = [Bullets(tuple(facts))]
    table = hyperparameter_table(trajectory.snapshots)
    blocks.append(table if table is not None else
                  Paragraph("No optimizer hyper-parameters were recorded in these snapshots."))
    if run.nonfinite:
        blocks.append(Bullets(tuple(f"NON-FINITE: {f.param} holds {f.count} NaN/Inf value(s) from snapshot "
                                    f"{f.snapshot} ({_time(f.step, f.epoch)})" for f in run.nonfinite)))
    if trajectory.warnings:
        blocks.append(Bullets(tuple(f"note: {w}" for w in trajectory.warnings)))
    return Section("Run", tuple(blocks))


def layer_table(params: Sequence[ParamSummary]) -> Table:
    rows = tuple(
        (p.param, p.kind, p.shape, _num(p.first_norm), _num(p.min_norm), when(p.min_step, p.min_epoch),
         _num(p.last_norm),
         percent_change(p.rel_change), angle(p.total_angle_rad), str(p.nonfinite))
        for p in params if p.kind != "buffer"
    )
    return Table(("parameter", "kind", "shape", "first |w|", "min |w|", "min at", "last |w|", "change",
                  "angle moved", "non-finite"), rows,
                 numeric=(False, False, False, True, True, True, True, True, True, True),
                 caption="; ".join(not_shown_notes([p for p in params if p.kind != "buffer"])))


def plot_section(trajectory: Trajectory, extra: Sequence[Figure] = (),
                 markers: Sequence[plots.Marker] = (),
                 recommended_lr: Sequence[tuple[float, float]] = ()) -> Section:
    figures: list[Block] = []
    png = plots.norm_trajectories_png(trajectory, markers=markers)
    if png is not None:
        figures.append(Figure("norms", "Norm trajectories", png,
                              "Top: each weight tensor's norm relative to its first snapshot. Bottom: the total norm."))
    png = plots.heatmap_png(trajectory)
    if png is not None:
        figures.append(Figure("heatmap", "Layers × time", png,
                              "Each row is a weight or normalization-scale tensor; colour is log2 of its norm "
                              "relative to the first snapshot."))
    png = plots.lr_schedule_png(trajectory, recommended=recommended_lr, markers=markers)
    if png is not None:
        figures.append(Figure("lr", "Learning-rate schedule", png, "The LR recorded in each snapshot"
                              + (" and the recommended schedule." if recommended_lr else ".")))
    figures.extend(extra)
    return Section("Plots", tuple(figures) or (Paragraph("Nothing to plot."),))


def build_report(trajectory: Trajectory, *, analysis_sections: Sequence[Section] = (),
                 extra_figures: Sequence[Figure] = (), markers: Sequence[plots.Marker] = (),
                 recommended_lr: Sequence[tuple[float, float]] = ()) -> Report:
    """The report for one run. Analyses contribute their own sections, figures and plot markers."""
    run = summarize_run(trajectory)
    params = summarize_params(trajectory)
    sections = [
        run_section(trajectory, run),
        Section("Per-layer norms", (layer_table(params),)),
        plot_section(trajectory, extra_figures, markers, recommended_lr),
        *analysis_sections,
    ]
    name = trajectory.root.rstrip("/").rpartition("/")[2] or trajectory.root
    return Report(title=f"normscope report: {name}",
                  subtitle=f"{run.snapshots} snapshots of {trajectory.root} ({trajectory.layout})",
                  sections=tuple(sections))
