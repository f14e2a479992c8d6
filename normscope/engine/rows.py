"""Per-neuron (per output row) numbers of one tensor against its previous snapshot: what the row
granularity (`normscope.analysis.row_equilibrium`) reads.

A row is everything but dim 0 (an output neuron of a linear or conv weight, as Kosson et al. measure
it). Torch ops only, in float64, on whatever device the tensors are on — the CUDA path is the same
ops on a CUDA tensor. Memory beyond the inputs: the float64 copies of one tensor pair and four
arrays of length rows.

With `granularity="row"` the engine's checkpoint pass (`driver.run_engine`) runs `row_sums` on every
loaded piece of ndim ≥ 2 that has a previous snapshot, while the piece is in memory for the per-tensor
sums (no second read). `RowCollector` joins the row slices the planner cut a large tensor into and,
once a tensor's rows are all in, keeps only its `RowSpread`: the sorted per-row angles and norms, or,
for a tensor of more than `SPREAD_POINTS` rows, their percentiles 0, 1, …, 100. What a run keeps is
then at most 2·`SPREAD_POINTS` float32 numbers per (tensor, snapshot), however wide the model is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from normscope.errors import BadInputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

GRANULARITY_TENSOR = "tensor"
GRANULARITY_ROW = "row"
GRANULARITIES = (GRANULARITY_TENSOR, GRANULARITY_ROW)

# Rows kept exactly per (tensor, snapshot); a wider tensor keeps the 101 percentiles of each quantity,
# so its p10/p50/p90 are exact and a share of rows inside a band is good to a percent.
SPREAD_POINTS = 101
_PERCENTS = np.linspace(0.0, 100.0, SPREAD_POINTS)


@dataclass(frozen=True)
class RowSums:
    """Per row of one tensor: |w_r|², |w_prev,r|², ⟨w_r, w_prev,r⟩ and |w_r − w_prev,r|² (float64)."""

    norm_sq: np.ndarray
    prev_norm_sq: np.ndarray
    dot_prev: np.ndarray
    diff_sq: np.ndarray
    row_numel: int


def row_sums(weight: torch.Tensor, prev: torch.Tensor) -> RowSums:
    """Row sums of a tensor (ndim ≥ 2) against the same-shaped tensor of the previous snapshot."""
    import torch  # lazy: the caller holds tensors, so torch is imported; a tensor-only run never is

    if weight.ndim < 2:
        raise BadInputError(f"rows need a tensor of 2 or more dims, got shape {tuple(weight.shape)}")
    if tuple(prev.shape) != tuple(weight.shape):
        raise BadInputError(f"previous snapshot has shape {tuple(prev.shape)}, not {tuple(weight.shape)}")
    w = weight.detach().reshape(weight.shape[0], -1).to(torch.float64)
    p = prev.detach().to(weight.device).reshape(weight.shape[0], -1).to(torch.float64)
    d = w - p
    sums = torch.stack([(w * w).sum(1), (p * p).sum(1), (w * p).sum(1), (d * d).sum(1)]).cpu().numpy()
    return RowSums(sums[0], sums[1], sums[2], sums[3], int(w.shape[1]))


def row_angles(sums: RowSums) -> np.ndarray:
    """Angle per row between the two snapshots (radians; NaN for a zero or non-finite row). The
    chord form, from |Δw_r|², resolves the tiny angles arccos(cos) cannot (`trajectory.angle_between`)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        a, b = np.sqrt(sums.norm_sq), np.sqrt(sums.prev_norm_sq)
        chord = np.sqrt(np.maximum(sums.diff_sq - (a - b) ** 2, 0.0) / (a * b))
        angles = 2.0 * np.arcsin(np.minimum(1.0, chord / 2.0))
    angles[~((a > 0) & (b > 0) & np.isfinite(a) & np.isfinite(b))] = math.nan
    return angles


@dataclass(frozen=True)
class RowSpread:
    """One tensor's rows over one interval, compacted: the sorted finite per-row angles (radians) and
    norms |w_r| — every row when `exact`, else their percentiles 0…100 — and the tensor's own sums
    (which give its per-tensor angle). Small and picklable: it is what distributed work items return."""

    rows: int
    row_numel: int
    exact: bool
    angles: np.ndarray  # float32, sorted
    norms: np.ndarray  # float32, sorted
    nonfinite_rows: int  # rows whose angle is undefined (zero or non-finite), left out of `angles`
    norm_sq: float
    prev_norm_sq: float
    dot_prev: float
    diff_sq: float

    def percentile(self, values: np.ndarray, q: float) -> float:
        if not len(values):
            return math.nan
        if self.exact:
            return float(np.percentile(values, q))
        return float(np.interp(q, _PERCENTS, values))

    def share_within(self, values: np.ndarray, lo: float, hi: float) -> float:
        """Share of the rows of `values` (angles or norms) in [lo, hi]."""
        if not len(values):
            return math.nan
        if self.exact:
            return float(np.mean((values >= lo) & (values <= hi)))
        # the percentile curve inverted: the share of rows below a value, to a percent
        below = np.interp([lo, hi], values, _PERCENTS, left=0.0, right=100.0)
        return float(below[1] - below[0]) / 100.0

    def tensor_angle(self) -> float:
        from normscope.trajectory import angle_between  # lazy: pandas, which the engine needs not

        return angle_between(math.sqrt(self.prev_norm_sq), math.sqrt(self.norm_sq), self.dot_prev, self.diff_sq)


def spread_of(sums: RowSums) -> RowSpread:
    """The compact form of one tensor's row sums (see `RowSpread`)."""
    angles = row_angles(sums)
    finite = np.sort(angles[np.isfinite(angles)])
    norms = np.sqrt(sums.norm_sq)
    norms = np.sort(norms[np.isfinite(norms)])
    rows = len(sums.norm_sq)
    exact = rows <= SPREAD_POINTS
    if not exact:
        finite = np.percentile(finite, _PERCENTS) if len(finite) else finite
        norms = np.percentile(norms, _PERCENTS) if len(norms) else norms
    return RowSpread(
        rows=rows, row_numel=sums.row_numel, exact=exact, angles=finite.astype(np.float32),
        norms=norms.astype(np.float32), nonfinite_rows=int(rows - np.isfinite(angles).sum()),
        norm_sq=float(sums.norm_sq.sum()), prev_norm_sq=float(sums.prev_norm_sq.sum()),
        dot_prev=float(sums.dot_prev.sum()), diff_sq=float(sums.diff_sq.sum()),
    )


def _joined(parts: list[tuple[int, RowSums]]) -> RowSums:
    parts = sorted(parts, key=lambda part: part[0])
    return RowSums(*(np.concatenate([getattr(p, f) for _, p in parts])
                     for f in ("norm_sq", "prev_norm_sq", "dot_prev", "diff_sq")),
                   parts[0][1].row_numel)


@dataclass
class RowCollector:
    """Per-row numbers per (snapshot, parameter), gathered piece by piece (a piece is rows start:),
    kept raw only until the tensor's `total_rows` are all in, then as a `RowSpread`."""

    partial: dict[tuple[int, str], list[tuple[int, RowSums]]] = field(default_factory=dict)
    spreads: dict[tuple[int, str], RowSpread] = field(default_factory=dict)

    def add(self, snapshot: int, name: str, start: int, weight, prev, total_rows: int | None = None) -> None:
        if prev is None or weight.ndim < 2 or tuple(prev.shape) != tuple(weight.shape):
            return
        key = (snapshot, name)
        parts = self.partial.setdefault(key, [])
        parts.append((start, row_sums(weight, prev)))
        if total_rows is not None and sum(len(p.norm_sq) for _, p in parts) >= total_rows:
            self.spreads[key] = spread_of(_joined(self.partial.pop(key)))

    def for_snapshot(self, snapshot: int) -> dict[str, RowSpread]:
        for key in [k for k in self.partial if k[0] == snapshot]:  # slices of a tensor cut short
            self.spreads[key] = spread_of(_joined(self.partial.pop(key)))
        return {name: spread for (t, name), spread in self.spreads.items() if t == snapshot}
