"""The frame the live view shows: the latest state of a run, per layer, from the trajectory table
and the run's analysis.

`frame_of(trajectory, analysis)` gives the `LiveFrame`; the analysis runner calls it, so every
`RunAnalysis` carries the frame `watch` shows. `normscope.live.view` keeps a growing log's frame up
to date; rendering lives in `normscope.live.render`.

The angular update per step is the angle between w before and after one optimizer step. Tracker
logs know it exactly (|w| before, |w| after, |Δw|); for checkpoints it is the angle since the
previous snapshot, whatever the spacing (labelled so). At equilibrium a scale-invariant weight
turns by (docs/science.md §3, Wan et al. 2006.08419, Kosson et al. 2305.17212):

    SGD + momentum μ    sqrt(2 η λ / (1 + μ))
    AdamW (β1)          sqrt(2 η λ (1 − β1) / (1 + β1))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from normscope.analysis import theory
from normscope.analysis.summary import relative_change
from normscope.trajectory import Trajectory

if TYPE_CHECKING:  # pragma: no cover
    from normscope.analysis.recommend import Recommendation

UPDATE_ANGLE = "update_angle_rad"
# |cos(w, g)| below this, averaged over recent records, marks a layer as acting scale-invariant
INVARIANT_COS = 1e-3


def equilibrium_angle(optimizer: str, lr: float, weight_decay: float, momentum: float,
                      beta1: float) -> float:
    """Predicted per-step angular update of a scale-invariant weight at equilibrium (NaN: unknown)."""
    if not (lr > 0 and weight_decay > 0):
        return math.nan
    family = theory.optimizer_family(optimizer)
    if family == theory.SGD:
        return float(theory.angle_per_step(family, lr, weight_decay, momentum if math.isfinite(momentum) else 0.0))
    if family == theory.ADAMW and math.isfinite(beta1):
        return float(theory.angle_per_step(family, lr, weight_decay, beta1))
    return math.nan  # Adam with coupled decay, Lion, ...: no formula here


@dataclass(frozen=True)
class LayerLive:
    param: str
    kind: str
    norm: float
    norm_change: float  # relative to the first record
    grad_norm: float  # NaN: source has no gradients
    cos_wg: float  # mean over the recent records
    angle_rad: float  # mean per-step update angle over the recent records
    angle_is_per_step: bool  # False: angle since the previous snapshot (checkpoints)
    # From the equilibrium analysis (`analyze --equilibrium`), for the parameters it covers (those
    # the invariance verdicts call scale-invariant); NaN / "" for every other parameter.
    equilibrium_angle_rad: float  # predicted per-step angle at equilibrium
    scale_invariant: bool  # |cos(w, g)| < INVARIANT_COS on recent records
    equilibrium_status: str = ""
    angle_ratio: float = math.nan  # measured / predicted angle over the latest interval ("ratio last")


@dataclass(frozen=True)
class LiveFrame:
    root: str
    layout: str
    records: int
    step: int | None
    epoch: float | None
    optimizer: str
    lr: float
    weight_decay: float
    momentum: float
    beta1: float
    total_weight_norm: float  # sqrt(sum |w|^2) over kind "weight"
    total_weight_norm_first: float
    layers: tuple[LayerLive, ...]
    warnings: tuple[str, ...] = ()
    advice: tuple[str, ...] = field(default_factory=tuple)  # bounce status / ABEL advice lines


def frame_of(trajectory: Trajectory, analysis: Any, *, recent: int = 5,
             advice: Sequence[str] = ()) -> LiveFrame:
    """The frame of `trajectory` from `analysis`, `analyze_run`'s result on it.

    The prediction, ratio and status of scale-invariant parameters come from `analysis`, so `watch`
    shows the numbers `analyze --equilibrium` shows; no other parameter gets any.

    Args:
        trajectory: the run so far.
        analysis: its `RunAnalysis` (its `equilibrium` is read).
        recent: how many latest records cos(w, g) and the angle are averaged over.
        advice: the bounce / ABEL lines to show (`advice_lines`).

    Returns:
        The frame `normscope watch` renders.
    """
    table = trajectory.table
    if table.empty:
        return _empty_frame(trajectory, advice)
    covered = {} if analysis.equilibrium is None else {layer.param: layer for layer in analysis.equilibrium.layers}
    # column-wise over the table (a few grouped reductions), not a loop of pandas calls per parameter:
    # checkpoints of thousands of tensors
    finite = table[np.isfinite(table["norm"].to_numpy(dtype=float))]
    firsts = finite.groupby("param", sort=False)["norm"].first()  # first finite norm, whole run
    peaks = table.groupby("param", sort=False)["norm"].max()
    weights = table[table["kind"] == "weight"]
    by_snapshot = weights.groupby("snapshot")["norm_sq"].sum()
    total_first = math.sqrt(by_snapshot.iloc[0]) if len(by_snapshot) else math.nan
    total_last = math.sqrt(by_snapshot.iloc[-1]) if len(by_snapshot) else math.nan
    last_snapshot = int(table["snapshot"].max())
    window = table[table["snapshot"] > last_snapshot - recent]
    per_step = UPDATE_ANGLE in table and table[UPDATE_ANGLE].notna().any()
    return window_frame(trajectory, window, last_snapshot, per_step=bool(per_step), firsts=firsts, peaks=peaks,
                  totals=(total_first, total_last), covered=covered, advice=advice)



def _empty_frame(trajectory: Trajectory, advice: Sequence[str]) -> LiveFrame:
    return LiveFrame(root=trajectory.root, layout=trajectory.layout, records=0, step=None,
                     epoch=None, optimizer="", lr=math.nan, weight_decay=math.nan,
                     momentum=math.nan, beta1=math.nan, total_weight_norm=math.nan,
                     total_weight_norm_first=math.nan, layers=(),
                     warnings=tuple(trajectory.warnings), advice=tuple(advice))


def window_frame(trajectory: Trajectory, window: pd.DataFrame, last_snapshot: int, *, per_step: bool,
           firsts: Mapping[str, float], peaks: Mapping[str, float], totals: tuple[float, float],
           covered: Mapping[str, Any], advice: Sequence[str]) -> LiveFrame:
    """The frame from the rows of the latest records (`window`, ending at `last_snapshot`) and what
    the whole run contributes: whether it has per-step angles, each parameter's first finite and
    largest norm, the first and latest total weight norm, and the equilibrium analysis of the parameters it
    covers."""
    last = window[window["snapshot"] == last_snapshot]

    def recent_means(values: pd.Series) -> pd.Series:  # mean of the finite values per parameter
        values = values.astype(float)
        return values.where(np.isfinite(values.to_numpy())).groupby(window["param"], sort=False).mean()

    cos = recent_means(window["grad_dot"] / (window["norm"] * window["grad_norm"]))
    angles = recent_means(window[UPDATE_ANGLE] if per_step else window["angle_rad"])
    order = pd.unique(window["param"])
    # each parameter's numbers as plain lists in one order: one reindex per column, not a pandas
    # lookup per parameter (thousands of tensors)
    latest = window.drop_duplicates("param", keep="last").set_index("param").reindex(order)
    kinds = latest["kind"].tolist()
    norms = latest["norm"].to_numpy(dtype=float).tolist()
    grad_norms = latest["grad_norm"].to_numpy(dtype=float).tolist()
    mean_coses = cos.reindex(order).to_numpy(dtype=float).tolist()
    mean_angles = angles.reindex(order).to_numpy(dtype=float).tolist()
    first_norms = pd.Series(firsts, dtype=float).reindex(order).to_numpy(dtype=float).tolist()
    peak_norms = pd.Series(peaks, dtype=float).reindex(order).to_numpy(dtype=float).tolist()
    layers = []
    for i, param in enumerate(order):
        mean_cos = mean_coses[i]
        equilibrium = covered.get(str(param))
        layers.append(LayerLive(
            param=str(param), kind=str(kinds[i]), norm=norms[i],
            norm_change=relative_change(first_norms[i], norms[i], peak_norms[i]),
            grad_norm=grad_norms[i], cos_wg=mean_cos,
            angle_rad=mean_angles[i], angle_is_per_step=per_step,
            equilibrium_angle_rad=math.nan if equilibrium is None else equilibrium.predicted_angle_per_step_rad,
            scale_invariant=bool(abs(mean_cos) < INVARIANT_COS),
            equilibrium_status="" if equilibrium is None else equilibrium.status,
            angle_ratio=math.nan if equilibrium is None else equilibrium.ratio))
    head = last.iloc[0]
    return LiveFrame(
        root=trajectory.root, layout=trajectory.layout, records=last_snapshot + 1,
        step=None if pd.isna(head["step"]) else int(head["step"]),
        epoch=None if pd.isna(head["epoch"]) else float(head["epoch"]),
        optimizer=str(head["optimizer"]), lr=float(head["lr"]),
        weight_decay=float(head["weight_decay"]), momentum=float(head["momentum"]),
        beta1=float(head["beta1"]),
        total_weight_norm=totals[1], total_weight_norm_first=totals[0],
        layers=tuple(layers), warnings=tuple(trajectory.warnings), advice=tuple(advice))


def advice_lines(rec: Recommendation | None, why_not: str | None) -> tuple[str, ...]:
    """The display lines of a recommendation, or of why there is none yet.

    Args:
        rec: the recommendation, or None.
        why_not: why there is none (`RunAnalysis.skipped`), when `rec` is None.

    Returns:
        The bounce / ABEL lines `watch` shows.
    """
    if rec is None:  # e.g. no completed epoch yet, no epochs in the log
        return (f"bounce: not assessed yet ({why_not or 'no recommendation'})",)
    verdict = rec.verdict
    head = f"bounce / ABEL at epoch {verdict.at_epoch}: {verdict.status}"
    if verdict.evidence:
        head += f" — {verdict.evidence[0]}"
    return (head, *rec.advice)
