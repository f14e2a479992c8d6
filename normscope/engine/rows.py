"""Per-neuron (per output row) sums of one tensor and its previous snapshot: the numbers behind the
row granularity (`normscope.analysis.row_equilibrium`).

A row is everything but dim 0 (an output neuron of a linear or conv weight, as Kosson et al. measure
it). Torch ops only, in float64, on whatever device the tensors are on — the CUDA path is the same
ops on a CUDA tensor. Memory beyond the inputs: the float64 copies of one tensor pair and three
arrays of length rows.
"""

from __future__ import annotations

from dataclasses import dataclass

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
