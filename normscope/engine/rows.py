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

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from normscope.errors import BadInputError
from normscope.row_stats import RowSpread, RowSums, spread_of

if TYPE_CHECKING:  # pragma: no cover
    import torch

GRANULARITY_TENSOR = "tensor"
GRANULARITY_ROW = "row"
GRANULARITIES = (GRANULARITY_TENSOR, GRANULARITY_ROW)

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
