"""Report plots from the trajectory table, as PNG bytes (matplotlib's object API on Agg: no pyplot state).

Each function returns PNG bytes, or None when the run has nothing to draw (e.g. no LR recorded).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from normscope.report.escape import plot_label
from normscope.trajectory import Trajectory

MAX_LEGEND_ENTRIES = 12
DPI = 100


@dataclass(frozen=True)
class Marker:
    """A vertical line on a time-axis plot, e.g. a bounce minimum or a recommended decay."""

    x: float
    label: str
    color: str = "tab:red"
    style: str = "--"


def time_axis(trajectory: Trajectory) -> tuple[str, pd.Series]:
    """The x axis the plots share: epoch when every snapshot has one, else step, else snapshot index."""
    table = trajectory.table
    per_snapshot = table.drop_duplicates("snapshot").set_index("snapshot").sort_index()
    for column in ("epoch", "step"):
        values = per_snapshot[column]
        if len(values) and values.notna().all():
            return column, values.astype(float)
    return "snapshot", pd.Series(per_snapshot.index.astype(float), index=per_snapshot.index)


def to_png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def _weights(trajectory: Trajectory, kinds: Sequence[str]) -> pd.DataFrame:
    table = trajectory.table
    chosen = table[table["kind"].isin(kinds)]
    return chosen if not chosen.empty else table[table["kind"] != "buffer"]


def _draw_markers(ax, markers: Sequence[Marker]) -> None:
    seen: set[str] = set()
    for m in markers:
        ax.axvline(m.x, color=m.color, linestyle=m.style, linewidth=1.2,
                   label=None if m.label in seen else m.label)
        seen.add(m.label)


def norm_trajectories_png(trajectory: Trajectory, *, kinds: Sequence[str] = ("weight",),
                          markers: Sequence[Marker] = ()) -> bytes | None:
    """Each parameter's norm relative to its first snapshot (log scale), plus the total norm."""
    rows = _weights(trajectory, kinds)
    if rows.empty:
        return None
    axis, x_of = time_axis(trajectory)
    norms = rows.pivot_table(index="snapshot", columns="param", values="norm", sort=False)
    x = x_of.loc[norms.index].to_numpy()
    figure = Figure(figsize=(9, 6.5))
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    relative = norms / norms.iloc[0]
    many = norms.shape[1] > MAX_LEGEND_ENTRIES
    colors = _palette(norms.shape[1])
    for (param, series), color in zip(relative.items(), colors):
        top.plot(x, series.to_numpy(), color=color, linewidth=1.0 if many else 1.6,
                 label=None if many else plot_label(param), marker=None if many or len(x) > 40 else "o", markersize=3)
    top.set_yscale("log")
    top.yaxis.set_major_formatter(ScalarFormatter())
    top.yaxis.set_minor_formatter(ScalarFormatter())
    top.set_ylabel("|w| / |w| at first snapshot")
    top.set_title(f"Per-parameter norm ({', '.join(kinds)}), {norms.shape[1]} tensors"
                  + (" — colour: depth, dark = early" if many else ""))
    top.grid(True, which="both", alpha=0.3)
    total = np.sqrt((norms ** 2).sum(axis=1, min_count=1))
    bottom.plot(x, total.to_numpy(), color="black", linewidth=1.8, marker="o" if len(x) <= 40 else None,
                markersize=3, label="total norm")
    bottom.set_ylabel("total |w|")
    bottom.set_xlabel(axis)
    bottom.grid(True, alpha=0.3)
    _draw_markers(top, markers)
    _draw_markers(bottom, markers)
    if not many:
        top.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if markers:
        bottom.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return to_png(figure)


def _palette(n: int) -> list:
    cmap = colormaps["viridis" if n > MAX_LEGEND_ENTRIES else "tab10" if n <= 10 else "tab20"]
    if n > MAX_LEGEND_ENTRIES:
        return [cmap(i / max(n - 1, 1)) for i in range(n)]
    return [cmap(i % cmap.N) for i in range(n)]


def heatmap_png(trajectory: Trajectory, *, kinds: Sequence[str] = ("weight", "norm")) -> bytes | None:
    """Parameters × time, coloured by log2(|w_t| / |w_0|): where the norm grows or shrinks, layer by layer."""
    rows = _weights(trajectory, kinds)
    if rows.empty:
        return None
    axis, x_of = time_axis(trajectory)
    norms = rows.pivot_table(index="param", columns="snapshot", values="norm", sort=False)
    with np.errstate(divide="ignore", invalid="ignore"):
        change = np.log2(norms.to_numpy() / norms.iloc[:, [0]].to_numpy())
    finite = change[np.isfinite(change)]
    span = max(float(np.max(np.abs(finite))) if finite.size else 1.0, 1e-3)
    height = min(2.0 + 0.22 * norms.shape[0], 30.0)
    figure = Figure(figsize=(9, height))
    ax = figure.subplots()
    xs = x_of.loc[norms.columns].to_numpy(dtype=float)
    # cell edges half-way between snapshots, so the x axis is in real epochs/steps even when uneven
    mids = (xs[1:] + xs[:-1]) / 2 if len(xs) > 1 else np.array([])
    first_gap = (xs[1] - xs[0]) / 2 if len(xs) > 1 else 0.5
    last_gap = (xs[-1] - xs[-2]) / 2 if len(xs) > 1 else 0.5
    edges = np.concatenate([[xs[0] - first_gap], mids, [xs[-1] + last_gap]])
    image = ax.pcolormesh(edges, np.arange(norms.shape[0] + 1), np.ma.masked_invalid(change), cmap="RdBu_r",
                          norm=TwoSlopeNorm(vmin=-span, vcenter=0.0, vmax=span))
    ax.invert_yaxis()
    ax.set_yticks(np.arange(norms.shape[0]) + 0.5)
    ax.set_yticklabels([plot_label(p) for p in norms.index], fontsize=max(4, min(8, int(400 / max(norms.shape[0], 1)))))
    ax.set_xlabel(axis)
    ax.set_title("log2 of norm relative to the first snapshot (red: grew, blue: shrank)")
    figure.colorbar(image, ax=ax, label="log2(|w_t| / |w_0|)")
    return to_png(figure)


def lr_schedule_png(trajectory: Trajectory, *, recommended: Sequence[tuple[float, float]] = (),
                    markers: Sequence[Marker] = ()) -> bytes | None:
    """The learning rate recorded in each snapshot (per distinct group), and a recommended schedule."""
    table = trajectory.table
    lrs = table[table["lr"].notna()]
    if lrs.empty and not recommended:
        return None
    axis, x_of = time_axis(trajectory)
    figure = Figure(figsize=(9, 3.2))
    ax = figure.subplots()
    if not lrs.empty:
        groups = lrs.groupby(["snapshot"])["lr"].unique()
        width = max(len(v) for v in groups)
        for g in range(width):
            values = [v[g] if g < len(v) else np.nan for v in groups]
            ax.step(x_of.loc[groups.index].to_numpy(), values, where="post", marker="o", markersize=3,
                    label="recorded LR" if width == 1 else f"recorded LR, group {g}")
    if recommended:
        rx, ry = zip(*recommended)
        ax.step(rx, ry, where="post", color="tab:green", linestyle="--", label="recommended")
    _draw_markers(ax, markers)
    ax.set_yscale("log")
    ax.set_xlabel(axis)
    ax.set_ylabel("learning rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return to_png(figure)
