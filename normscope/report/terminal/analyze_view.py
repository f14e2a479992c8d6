"""Terminal rendering of `normscope analyze`: a run header and one row per parameter (rich)."""

from __future__ import annotations

import math

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from normscope.analysis.overview import Overview
from normscope.analysis.summary import ParamSummary, RunSummary
from normscope.report.escape import printable
from normscope.report.quantities import angle, not_shown_notes, percent_change, when
from normscope.report.terminal.equilibrium_view import render_equilibrium, render_invariance
from normscope.report.terminal.recommend_view import bounce_analysis_view
from normscope.report.terminal.tables import NAME_WIDTH, Col, FitTable
from normscope.snapshot import SnapshotMeta
from normscope.trajectory import Trajectory


def fmt(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}"


fmt_when = when


def _sig(x: float) -> str:
    return f"{x:.3g}"


def hyperparams_line(meta: SnapshotMeta, snapshots: tuple[SnapshotMeta, ...] = ()) -> str:
    """The optimizer settings of a snapshot: a setting all param groups share once, one that differs
    per group, and where the LR changed over `snapshots`, its largest value beside the last (a cosine
    schedule ends near 0, which alone says nothing about the run)."""
    if not meta.param_groups:
        return "no optimizer state found"
    groups = meta.param_groups
    parts = [printable(meta.optimizer or "optimizer")]
    per_group = []
    for label, field in (("lr", "lr"), ("wd", "weight_decay"), ("momentum", "momentum")):
        values = [getattr(g, field) for g in groups]
        if all(v is None for v in values):
            continue
        if len(set(values)) > 1:
            per_group.append((label, values))
            continue
        text = f"{label}={_sig(values[0])}"
        if field == "lr":
            seen = [g.lr for m in snapshots for g in m.param_groups
                    if g.lr is not None and math.isfinite(g.lr)]
            if seen and max(seen) != values[0]:
                text += f" (last; largest {_sig(max(seen))})"
        parts.append(text)
    g = groups[0]
    if g.betas is not None:
        parts.append(f"betas=({g.betas[0]:g}, {g.betas[1]:g})")
    if per_group:
        parts.append("; ".join(
            f"group {i}: "
            + " ".join(f"{label}={'–' if values[i] is None else _sig(values[i])}" for label, values in per_group)
            for i in range(len(groups))))
    elif len(groups) > 1:
        parts.append(f"({len(groups)} param groups, same settings)")
    if meta.hyperparams_source:
        parts.append(f"[from {printable(meta.hyperparams_source)}]")
    return " ".join(parts)


def run_header(traj: Trajectory, run: RunSummary) -> RenderableType:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    first, last = traj.snapshots[0], traj.snapshots[-1]
    saved_by = f", {printable(traj.framework)}" if traj.framework else ""
    grid.add_row("run", f"{printable(traj.root)} ({traj.layout}{saved_by})")
    grid.add_row(
        "snapshots",
        f"{run.snapshots}, {fmt_when(first.step, first.epoch)} → {fmt_when(last.step, last.epoch)}, "
        f"ordered by {printable(traj.ordering)}",
    )
    grid.add_row("parameters", f"{run.params} tensors, {run.numel:,} elements")
    grid.add_row("optimizer", hyperparams_line(last, tuple(traj.snapshots)))
    def at(snapshot: int) -> str:
        meta = traj.snapshots[snapshot]
        return fmt_when(meta.step, meta.epoch)

    broken = (f" · not finite at {run.total_norm_nonfinite_snapshots} snapshot(s): a tensor holds NaN/Inf"
              if run.total_norm_nonfinite_snapshots else "")
    grid.add_row(
        "total norm",
        Text.assemble(
            f"first {fmt(run.total_norm_first)} · max {fmt(run.total_norm_max)} "
            f"({at(run.total_norm_max_snapshot)}) · min {fmt(run.total_norm_min)} "
            f"({at(run.total_norm_min_snapshot)}) · last {fmt(run.total_norm_last)}  ",
            (f"(√Σ|w|² over kinds: {', '.join(run.total_kinds)})", "dim"),
            (broken, "bold red"),
        ),
    )
    return grid


# The per-parameter columns and the order a narrow page leaves them out (1 first); numbers are never cut.
PARAM_COLUMNS = (
    Col("parameter", justify="left", wrap=True, min_width=NAME_WIDTH),
    Col("kind", justify="left", drop=2),
    Col("shape", justify="left", drop=1),
    Col("first", drop=5),
    Col("min", drop=4),
    Col("min at", drop=3),
    Col("last"),
    Col("change"),
    Col("angle moved"),
)


def params_table(params: list[ParamSummary], traj: Trajectory | None = None) -> FitTable:
    """One row per parameter, laid out for the width it gets (`FitTable`)."""
    rows = [(printable(p.param), p.kind, printable(p.shape), fmt(p.first_norm), fmt(p.min_norm),
             fmt_when(p.min_step, p.min_epoch), fmt(p.last_norm), percent_change(p.rel_change),
             angle(p.total_angle_rad)) for p in params]
    styles = ["red" if p.first_nonfinite_snapshot is not None else None for p in params]
    return FitTable(PARAM_COLUMNS, rows, title="Per-parameter norm trajectories", row_styles=styles)


# Parameters a terminal names one line each when they hold NaN/Inf: a divergence reaches every
# parameter within a step or two, and thousands of lines would bury the first. The JSON output
# has them all (`totals.nonfinite`).
NONFINITE_SHOWN = 5


def more_nonfinite(run: RunSummary) -> str | None:
    """The line that stands for the parameters past `NONFINITE_SHOWN`, or None if there are none."""
    more = len(run.nonfinite) - NONFINITE_SHOWN
    if more <= 0:
        return None
    return f"and {more} more parameter(s) hold non-finite values (all of them: -f json, totals.nonfinite)"


def warnings_block(traj: Trajectory, run: RunSummary, *, notes: bool = True) -> RenderableType | None:
    """Non-finite findings and (with `notes`) the source's warnings; `analyze` prints those on
    stderr itself, once for every format."""
    lines: list[Text] = []
    for f in run.nonfinite[:NONFINITE_SHOWN]:
        lines.append(Text(
            f"non-finite values: {printable(f.param)} has {f.count} NaN/Inf element(s) from snapshot {f.snapshot} "
            f"({fmt_when(f.step, f.epoch)}) on", style="bold red"))
    if more := more_nonfinite(run):
        lines.append(Text(f"non-finite values: {more}", style="bold red"))
    for w in traj.warnings if notes else ():
        lines.append(Text(f"note: {printable(w)}", style="yellow"))
    return Group(*lines) if lines else None


# Rows per table in the terminal view: a table of thousands of tensors takes rich seconds to lay
# out and nobody reads it there; the CSV/JSON/Parquet outputs always have every row.
DEFAULT_ROWS = 200


def _truncated(rows: list, max_rows: int | None, what: str,
               formats: str = "--format csv or json") -> tuple[list, Text | None]:
    if max_rows is None or max_rows <= 0 or len(rows) <= max_rows:
        return rows, None
    hidden = len(rows) - max_rows
    return rows[:max_rows], Text(
        f"… {hidden:,} more {what} not shown (--rows 0 shows all; {formats} has every row)",
        style="dim")


def analyses_block(result: Overview, max_rows: int | None = None, *, notes: bool = True) -> list[RenderableType]:
    """The analyses after the per-parameter table; with `notes`, the equilibrium report's notes too."""
    parts: list[RenderableType] = []
    if result.bounces is not None:
        parts.extend([Text(""), bounce_analysis_view(result.bounces, max_rows)])
    if result.invariance:
        verdicts, more = _truncated(list(result.invariance), max_rows, "verdicts", "--format json")
        parts.extend([Text(""), render_invariance(verdicts)])
        if more is not None:
            parts.append(more)
    if result.equilibrium is not None:
        parts.extend([Text(""), render_equilibrium(result.equilibrium, notes=notes)])
    if result.rows is not None:  # read with --granularity row
        # lazy: the per-row analysis and engine.rows (15 ms), for --granularity row only
        from normscope.report.terminal.row_view import render_rows

        parts.extend([Text(""), render_rows(result.rows, max_rows)])
    for name, why in result.skipped.items():
        parts.append(Text(f"{name}: not analysed — {printable(why)}", style="dim"))
    return parts


def analyze_view(traj: Trajectory, result: Overview,
                 max_rows: int | None = DEFAULT_ROWS, *, notes: bool = True) -> RenderableType:
    """The whole terminal view: run header, per-parameter table (buffers left out), analyses.
    Per-parameter tables show their first `max_rows` rows (None or 0: all) and say how many more."""
    run = result.run
    shown, more = _truncated([p for p in result.params if p.kind != "buffer"], max_rows, "parameters")
    parts: list[RenderableType] = [run_header(traj, run), Text(""), params_table(shown, traj)]
    if more is not None:
        parts.append(more)
    parts.extend(Text(note, style="dim") for note in not_shown_notes(shown))
    parts.extend(analyses_block(result, max_rows, notes=notes))
    block = warnings_block(traj, run, notes=notes)
    if block is not None:
        parts.extend([Text(""), block])
    return Group(*parts)
