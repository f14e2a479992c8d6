"""`--plot FILE.png`: the weight norm with its bounces, where ABEL would decay, and the LR on a second axis."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import matplotlib
import numpy as np
from matplotlib.ticker import MaxNLocator

from normscope.analysis.recommend import Recommendation
from normscope.report.escape import plot_label

_NORM, _SMOOTH, _REC, _EXACT, _LR, _LR_REC = "#1f4e79", "#6fa8dc", "#d9480f", "#868e96", "#2b8a3e", "#8ce99a"


def plot_recommendation(rec: Recommendation, path: str | Path | BinaryIO, *, title: str = "",
                        dpi: int = 150) -> Path | BinaryIO:
    """Write the picture to `path` (PNG, matplotlib's Agg backend) and return the path."""
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # lazy: pyplot reads the backend when imported, so after the line above

    s, robust = rec.series, rec.robust
    epochs = np.asarray(s.epochs, dtype=float)
    fig, ax = plt.subplots(figsize=(10, 5.8), layout="constrained")
    ax.plot(epochs, s.norm_sq, "o-", color=_NORM, ms=3, lw=1.2, label="Σ‖w‖² (end of epoch)")
    ax.plot(epochs, np.exp(robust.smoothed_log_norm_sq), "-", color=_SMOOTH, lw=2.5, alpha=0.6,
            label=f"smoothed ({robust.params.smooth_window} epochs)")

    norm_at = dict(zip(s.epochs, s.norm_sq))
    for i, b in enumerate(robust.bounces):
        ax.plot([b.minimum_epoch], [norm_at[b.minimum_epoch]], "v", color=_REC, ms=11, zorder=5,
                label="bounce minimum" if i == 0 else None)
        ax.annotate(f"−{b.depth:.1%} / +{b.rise:.1%}\nconf. {b.confidence:.2f}",
                    (b.minimum_epoch, norm_at[b.minimum_epoch]), textcoords="offset points", xytext=(-8, -26),
                    ha="right", va="top", fontsize=8, color=_REC)
        if b.rise_end_epoch is not None:
            ax.plot([b.rise_end_epoch], [norm_at[b.rise_end_epoch]], "^", color=_REC, ms=9, mfc="none",
                    zorder=5, label="end of the rise" if i == 0 else None)

    for i, e in enumerate(rec.exact_decay_epochs):
        ax.axvline(e, color=_EXACT, ls=":", lw=1.2, label="exact ABEL rule decays" if i == 0 else None)
    for i, e in enumerate(rec.decay_epochs):
        ax.axvline(e, color=_REC, ls="-", lw=2, alpha=0.85, label="recommended decays" if i == 0 else None)
    for i, skipped in enumerate(rec.skipped):
        ax.axvline(skipped.epoch, color=_REC, ls="--", lw=1, alpha=0.5,
                   label="dropped: within a relaxation time" if i == 0 else None)
    for i, d in enumerate(rec.past_decays):
        if d.premature:
            ax.axvspan(d.epoch - d.epochs_since_previous, d.epoch, color="#ffa8a8", alpha=0.25,
                       label="decay before equilibrium" if i == 0 else None)

    ax.set_xlabel("epochs completed")
    ax.set_ylabel(f"Σ‖w‖²  ({'+'.join(s.include_kinds)}, {s.n_tensors} tensors)")
    ax.grid(alpha=0.25)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(min(epochs[0], 0) - 0.5, max(rec.total_epochs, epochs[-1]) + 0.5)

    lr_ax = ax.twinx()
    x_sched = np.arange(len(rec.schedule) + 1)
    lr_ax.step(x_sched, list(rec.schedule) + [rec.schedule[-1]], where="post", color=_LR, lw=2,
               label="recommended LR")
    recorded = np.asarray(s.lr, dtype=float)
    recorded = np.where(recorded > 0, recorded, np.nan)  # an LR of 0 has no place on a log axis
    if np.isfinite(recorded).any():
        lr_ax.step(epochs, recorded, where="post", color=_LR_REC, lw=4, alpha=0.6, label="LR recorded in the run",
                   zorder=1)
    lr_ax.set_yscale("log")
    lr_ax.set_ylabel("learning rate", color=_LR)
    lr_ax.tick_params(axis="y", which="both", colors=_LR)

    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = lr_ax.get_legend_handles_labels()
    fig.legend(handles + h2, labels + l2, loc="outside lower center", fontsize=8, ncols=5, frameon=False)
    verdict = f"{rec.verdict.status} at epoch {rec.verdict.at_epoch}"
    milestones = ", ".join(map(str, rec.decay_epochs)) or "none"
    ax.set_title(f"{plot_label(title or 'run')} — decay at epoch {milestones} (×{rec.decay_factor:g}); "
                 f"{verdict}", fontsize=11)
    out = path if hasattr(path, "write") else Path(path)  # a file object (the report's buffer) or a path
    fig.savefig(out, dpi=dpi, format="png")
    plt.close(fig)
    return out

