"""Per-neuron (per output row) sums of one tensor and its previous snapshot: the numbers behind the
row granularity (`normscope.analysis.row_equilibrium`).

A row is everything but dim 0 (an output neuron of a linear or conv weight, as Kosson et al. measure
it). Torch ops only, in float64, on whatever device the tensors are on — the CUDA path is the same
ops on a CUDA tensor. Memory beyond the inputs: the float64 copies of one tensor pair and three
arrays of length rows.

With `granularity="row"` the engine's checkpoint pass (`driver.run_engine`) runs `row_sums` on every
loaded piece of ndim ≥ 2 that has a previous snapshot, while the piece is in memory for the per-tensor
sums (no second read), and `RowCollector` joins the row slices the planner cut a large tensor into.
What it keeps is three float64 numbers per row per snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from typing import TYPE_CHECKING

import numpy as np

from normscope.errors import BadInputError

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class RowSums:
    """Per row of one tensor: |w_r|², |w_prev,r|² and ⟨w_r, w_prev,r⟩ (float64 arrays)."""

    norm_sq: np.ndarray
    prev_norm_sq: np.ndarray
    dot_prev: np.ndarray
    row_numel: int


def row_sums(weight: torch.Tensor, prev: torch.Tensor) -> RowSums:
    """Row sums of a tensor (ndim ≥ 2) against the same-shaped tensor of the previous snapshot."""
    import torch

    if weight.ndim < 2:
        raise BadInputError(f"rows need a tensor of 2 or more dims, got shape {tuple(weight.shape)}")
    if tuple(prev.shape) != tuple(weight.shape):
        raise BadInputError(f"previous snapshot has shape {tuple(prev.shape)}, not {tuple(weight.shape)}")
    w = weight.detach().reshape(weight.shape[0], -1).to(torch.float64)
    p = prev.detach().to(weight.device).reshape(weight.shape[0], -1).to(torch.float64)
    sums = torch.stack([(w * w).sum(1), (p * p).sum(1), (w * p).sum(1)]).cpu().numpy()
    return RowSums(sums[0], sums[1], sums[2], int(w.shape[1]))


GRANULARITY_TENSOR = "tensor"
GRANULARITY_ROW = "row"
GRANULARITIES = (GRANULARITY_TENSOR, GRANULARITY_ROW)


@dataclass
class RowCollector:
    """Row sums per (snapshot, parameter), gathered piece by piece (a piece is rows start:stop)."""

    parts: dict[tuple[int, str], list[tuple[int, RowSums]]] = field(default_factory=dict)

    def add(self, snapshot: int, name: str, start: int, weight, prev) -> None:
        if prev is None or weight.ndim < 2 or tuple(prev.shape) != tuple(weight.shape):
            return
        self.parts.setdefault((snapshot, name), []).append((start, row_sums(weight, prev)))

    def for_snapshot(self, snapshot: int) -> dict[str, RowSums]:
        out: dict[str, RowSums] = {}
        for (t, name), parts in self.parts.items():
            if t != snapshot:
                continue
            parts = sorted(parts, key=lambda part: part[0])
            out[name] = RowSums(
                np.concatenate([p.norm_sq for _, p in parts]),
                np.concatenate([p.prev_norm_sq for _, p in parts]),
                np.concatenate([p.dot_prev for _, p in parts]),
                parts[0][1].row_numel,
            )
        return out
