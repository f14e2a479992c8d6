"""Per-neuron (per output row) numbers of one tensor against its previous snapshot, as records:
`RowSums` (the engine's per-row sums) and `RowSpread` (their compact form a run keeps), with the
maths on them. The engine makes them (`normscope.engine.rows`); the row granularity's analysis
(`normscope.analysis.row_equilibrium`) reads them. numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from normscope.angles import angle_between

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


def row_angles(sums: RowSums) -> np.ndarray:
    """Angle per row between the two snapshots (radians; NaN for a zero or non-finite row). The
    chord form, from |Δw_r|², resolves the tiny angles arccos(cos) cannot (`normscope.angles.angle_between`)."""
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
