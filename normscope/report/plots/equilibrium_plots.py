"""Equilibrium plots (matplotlib, Agg): measured vs predicted per layer over time, and a ratio heat-map.

Both read only the EquilibriumReport; nothing is computed here beyond choosing axes.
"""

from __future__ import annotations

import math
import os
from typing import BinaryIO

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm

from normscope.analysis.equilibrium import EquilibriumReport, LayerEquilibrium
from normscope.report.escape import plot_label

_MEASURED = "#1f77b4"
_PREDICTED = "#d62728"


def _pyplot():
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # lazy: pyplot reads the backend when imported, so after the line above

    return plt


def _x(layer: LayerEquilibrium) -> tuple[list[float], str]:
    if all(p.epoch is not None for p in layer.points):
        return [float(p.epoch) for p in layer.points], "epoch"
    return [p.step for p in layer.points], "step"


def _lr_changes(layer: LayerEquilibrium, xs: list[float]) -> list[float]:
    """x positions where a new LR phase starts (the interval LR jumps by more than 25%)."""
    out = []
    for prev, point, x_prev in zip(layer.points, layer.points[1:], xs):
        if prev.lr > 0 and point.lr > 0 and max(prev.lr, point.lr) / min(prev.lr, point.lr) > 1.25:
            out.append(x_prev)
    return out


def _shade_approach(ax, layer: LayerEquilibrium, xs: list[float]) -> None:
    """Grey where the layer is less than 3 relaxation times into its LR phase."""
    start = None
    for x, point in zip(xs, layer.points):
        early = point.relaxations_in_phase < 3
        if early and start is None:
            start = x
        if not early and start is not None:
            ax.axvspan(start, x, color="0.92", zorder=0)
            start = None
    if start is not None:
        ax.axvspan(start, xs[-1], color="0.92", zorder=0)


_DENSE = 120  # above this many points per layer (per-step live logs), draw the raw values faint plus a rolling median


def _plot_measured(ax, xs: list[float], values: list[float]) -> None:
    if len(values) <= _DENSE:
        ax.plot(xs, values, color=_MEASURED, lw=1.4, marker="o", ms=2.5, label="measured")
        return
    window = max(5, len(values) // 60)
    smooth = pd.Series(values, dtype="float64").rolling(window, center=True, min_periods=1).median()
    ax.plot(xs, values, color=_MEASURED, lw=0.5, alpha=0.3)
    ax.plot(xs, smooth.to_numpy(), color=_MEASURED, lw=1.6, label=f"measured (rolling median of {window})")


def plot_equilibrium(report: EquilibriumReport, path: str | BinaryIO) -> str | BinaryIO:
    """One row per invariant layer: per-step angular update, and η|g|/|w| where known (Myrtle-style)."""
    plt = _pyplot()
    layers = list(report.layers)
    if not layers:
        raise ValueError("no scale-invariant layer to plot")
    has_grad = any(math.isfinite(p.lr_grad_over_norm) and math.isfinite(p.predicted_lr_grad_over_norm)
                   for layer in layers for p in layer.points)
    cols = 2 if has_grad else 1
    fig, axes = plt.subplots(len(layers), cols, figsize=(5.2 * cols, 2.3 * len(layers) + 0.6),
                             squeeze=False, sharex=True)
    for row, layer in enumerate(layers):
        xs, xlabel = _x(layer)
        panels = [("angular update per step (rad)", [p.angle_per_step_rad for p in layer.points],
                   [p.predicted_angle_per_step_rad for p in layer.points])]
        if has_grad:
            panels.append(("η·|g| / |w|", [p.lr_grad_over_norm for p in layer.points],
                           [p.predicted_lr_grad_over_norm for p in layer.points]))
        for col, (ylabel, measured, predicted) in enumerate(panels):
            ax = axes[row][col]
            _shade_approach(ax, layer, xs)
            _plot_measured(ax, xs, measured)
            ax.plot(xs, predicted, color=_PREDICTED, lw=1.4, ls="--", label="predicted (equilibrium)")
            for x in _lr_changes(layer, xs):
                ax.axvline(x, color="0.4", lw=0.8, ls=":")
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.25)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.tick_params(labelsize=8)
            if col == 0:
                ax.set_title(f"{plot_label(layer.param)}  ({layer.status})", fontsize=9, loc="left")
            if row == len(layers) - 1:
                ax.set_xlabel(xlabel, fontsize=8)
    axes[0][0].legend(fontsize=7, loc="upper right", frameon=False)
    fig.suptitle("Scale-invariant layers: measured vs predicted equilibrium (grey: < 3 relaxation times "
                 "into the LR phase; dotted: LR change)", fontsize=9)
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_ratio_heatmap(report: EquilibriumReport, path: str | BinaryIO) -> str | BinaryIO:
    """Layers × time, colour = log2(measured / predicted angle); white = on the prediction."""
    plt = _pyplot()
    layers = list(report.layers)
    if not layers:
        raise ValueError("no scale-invariant layer to plot")
    xs, xlabel = _x(layers[0])
    grid = np.full((len(layers), len(xs)), np.nan)
    for i, layer in enumerate(layers):
        for j, p in enumerate(layer.points[: len(xs)]):
            if math.isfinite(p.ratio) and p.ratio > 0:
                grid[i, j] = math.log2(p.ratio)
    lim = max(1.0, float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0)
    lim = min(lim, 4.0)
    fig, ax = plt.subplots(figsize=(min(3.0 + 0.16 * len(xs), 14), 1.1 + 0.38 * len(layers)))
    x = np.asarray(xs, dtype=float)
    mids = (x[1:] + x[:-1]) / 2 if len(x) > 1 else np.array([])
    first = x[0] - (mids[0] - x[0] if len(mids) else 0.5)
    last = x[-1] + (x[-1] - mids[-1] if len(mids) else 0.5)
    edges = np.concatenate([[first], mids, [last]])
    image = ax.pcolormesh(edges, np.arange(len(layers) + 1) - 0.5, np.clip(grid, -lim, lim), cmap="RdBu_r",
                          norm=TwoSlopeNorm(vcenter=0.0, vmin=-lim, vmax=lim), shading="flat")
    ax.set_ylim(len(layers) - 0.5, -0.5)
    ax.set_yticks(range(len(layers)), [plot_label(layer.param) for layer in layers], fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xlabel(xlabel, fontsize=8)
    for boundary in _lr_changes(layers[0], list(edges[1:])):
        ax.axvline(boundary, color="k", lw=1.0, ls=":")
    ticks = [t for t in range(-int(lim), int(lim) + 1)]
    bar = fig.colorbar(image, ax=ax, ticks=ticks, pad=0.01)
    bar.ax.set_yticklabels([f"×{2.0 ** t:g}" for t in ticks], fontsize=7)
    bar.set_label("measured / predicted angle", fontsize=8)
    ax.set_title("Angular update relative to equilibrium prediction (dotted: LR change)", fontsize=9, loc="left")
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig, plt, path: str | BinaryIO) -> str | BinaryIO:
    if not hasattr(path, "write"):  # a path, not the report's in-memory buffer
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=130, format="png")
    plt.close(fig)
    return path


__all__ = ["plot_equilibrium", "plot_ratio_heatmap"]
