"""Equilibrium per neuron: the spread of per-row angular updates against the prediction.

Rotational-equilibrium work (Wan et al. 2006.08419; Kosson et al., "Rotational Equilibrium",
2305.17212) shows that with AdamW, and in transformers, equilibrium holds per neuron — per output row
of a weight, the norm over all but dim 0 — not only per tensor. Per row r of C elements the predictions
are those of a tensor (docs/science.md §3–§4), applied row by row:

* angle between snapshots k steps apart: E cos θ_k = (1 − ηλ_eff)^{S(k)} (`equilibrium.effective_steps`),
  i.e. per step √(2ηλ(1−β₁)/(1+β₁)) for AdamW and √(2ηλ/(1+μ)) for SGD with momentum;
* AdamW equilibrium norm of a row: √(η·C/(2λ)), independent of the gradient's scale (Adam normalises
  each element's update), so every row of a tensor should reach the same norm.

A tensor is summarised by the distribution over its rows of measured/predicted angle (median and the
10th–90th percentile range, and the share of rows inside the equilibrium band `TOLERANCE`) and, for
AdamW, of |w_r| over its predicted norm. The tensor's own ratio, from the same sums, is reported next
to it: a tensor can sit on the prediction while its rows do not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from normscope.analysis import theory
from normscope.analysis.equilibrium import TOLERANCE, effective_steps
from normscope.row_stats import RowSpread, RowSums, row_angles, spread_of
from normscope.errors import BadInputError


@dataclass(frozen=True)
class RowEquilibrium:
    param: str
    rows: int
    row_numel: int
    steps: float  # k, optimizer steps between the two snapshots
    predicted_angle_rad: float  # per row (and per tensor), over the k steps
    angle_ratio_median: float  # measured/predicted angle over rows
    angle_ratio_p10: float
    angle_ratio_p90: float
    within_tolerance: float  # share of rows whose ratio lies in TOLERANCE
    tensor_angle_ratio: float  # the tensor's ratio from the same sums (the tensor granularity)
    norm_ratio_median: float  # AdamW: |w_r| / √(ηC/(2λ)); NaN for SGD
    norm_ratio_p10: float
    norm_ratio_p90: float


def predicted_angle(family: str, lr: float, weight_decay: float, momentum: float, steps: float) -> float:
    """Equilibrium angle over `steps` steps of a scale-invariant row (or tensor)."""
    lam_eff = theory.effective_weight_decay(family, weight_decay, momentum)
    s = float(effective_steps(np.array([steps], dtype=float), np.array([momentum], dtype=float))[0])
    return float(np.arccos(np.clip((1 - lr * lam_eff) ** s, -1.0, 1.0)))


def row_equilibrium(param: str, rows: RowSpread | RowSums, *, family: str, lr: float, weight_decay: float,
                    momentum: float, steps: float) -> RowEquilibrium:
    """Summary of one tensor's rows over one interval; `momentum` is μ (SGD) or β₁ (AdamW), `lr` the
    interval's mean learning rate."""
    if family not in (theory.SGD, theory.ADAMW):
        raise BadInputError(f"per-row predictions exist for SGD and AdamW, not {family!r}")
    if not (lr > 0 and weight_decay > 0 and steps > 0):
        raise BadInputError("per-row equilibrium needs a positive lr, weight decay and step count")
    spread = rows if isinstance(rows, RowSpread) else spread_of(rows)
    predicted = predicted_angle(family, lr, weight_decay, momentum, steps)
    angles = spread.angles.astype(np.float64)
    ratio = [spread.percentile(angles, q) / predicted for q in (50, 10, 90)]
    norm = [math.nan] * 3
    if family == theory.ADAMW:
        expected = float(theory.adamw_equilibrium_norm(lr, weight_decay, spread.row_numel))
        norm = [spread.percentile(spread.norms.astype(np.float64), q) / expected for q in (50, 10, 90)]
    lo, hi = TOLERANCE
    return RowEquilibrium(
        param=param, rows=spread.rows, row_numel=spread.row_numel, steps=float(steps),
        predicted_angle_rad=predicted, angle_ratio_median=ratio[0], angle_ratio_p10=ratio[1],
        angle_ratio_p90=ratio[2], within_tolerance=spread.share_within(angles, lo * predicted, hi * predicted),
        tensor_angle_ratio=spread.tensor_angle() / predicted, norm_ratio_median=norm[0],
        norm_ratio_p10=norm[1], norm_ratio_p90=norm[2],
    )


@dataclass(frozen=True)
class RowInterval:
    """One tensor's rows over the interval that ends at snapshot `snapshot`."""

    snapshot: int
    step: float
    result: RowEquilibrium
    lr: float = math.nan
    # the LR has held (within 1 %) for at least SETTLE_RELAXATIONS relaxation times (§3.5) by the
    # interval's end: the rows have had time to reach the prediction
    settled: bool = False


SETTLE_RELAXATIONS = 3


def row_report(source, *, optimizer: str | None = None) -> tuple[RowInterval, ...]:
    """Per-row summaries for every tensor and interval of a run read with `granularity="row"`:
    a `Trajectory` (its `rows`) or the engine's `SnapshotStats` list.

    The interval's LR, weight decay and momentum/β₁ are those recorded in its earlier snapshot (the
    scheduler steps before the save, as `equilibrium` assumes by default); intervals without a known
    step count, LR or weight decay, and optimizers other than SGD and AdamW, are left out."""
    if hasattr(source, "table"):  # a Trajectory
        metas, rows = list(source.snapshots), list(source.rows)
    else:
        metas, rows = [s.meta for s in source], [s.rows for s in source]
    out: list[RowInterval] = []
    phase: dict[str, tuple[float, float]] = {}  # param -> (LR of its current phase, step it began)
    for t in range(1, min(len(metas), len(rows))):
        before, after = metas[t - 1], metas[t]
        family = theory.optimizer_family(optimizer or after.optimizer or "")
        if family not in (theory.SGD, theory.ADAMW) or before.step is None or after.step is None:
            continue
        steps = after.step - before.step
        groups = {name: g for g in before.param_groups for name in g.params}
        for name, spread in rows[t].items():
            group = groups.get(name)
            if group is None or not (group.lr and group.weight_decay and steps > 0):
                continue
            momentum = (group.momentum or 0.0) if family == theory.SGD else (group.betas or (0.0,))[0]
            lr, began = phase.get(name, (math.nan, float(before.step)))
            if not abs(group.lr - lr) <= 0.01 * group.lr:
                lr, began = group.lr, float(before.step)
                phase[name] = (lr, began)
            tau = float(theory.relaxation_steps(family, group.lr, group.weight_decay, momentum))
            out.append(RowInterval(t, float(after.step), row_equilibrium(
                name, spread, family=family, lr=group.lr, weight_decay=group.weight_decay,
                momentum=momentum, steps=steps), lr=group.lr,
                settled=after.step - began >= SETTLE_RELAXATIONS * tau))
    return tuple(out)


def latest_by_tensor(report: tuple[RowInterval, ...]) -> list[RowInterval]:
    """Each tensor's last settled interval (its LR held for 3 relaxation times, so its rows had time
    to reach the prediction), else its last interval; in run order."""
    last: dict[str, RowInterval] = {}
    for interval in report:
        name = interval.result.param
        if interval.settled or name not in last or not last[name].settled:
            last[name] = interval
    return list(last.values())


__all__ = ["RowEquilibrium", "RowInterval", "latest_by_tensor", "predicted_angle", "row_angles",
           "row_equilibrium", "row_report"]
