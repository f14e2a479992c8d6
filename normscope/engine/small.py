"""Tensors smaller than one chunk row (biases, norm scales, 0-d scalars): reduced flat, in float64.

Padding each of them to a 4096-element row would waste most of the row and cost a tensor view per
stream, which dominates on models with thousands of BatchNorm vectors. Instead they are
concatenated (one `torch.cat` per stream), reduced element-wise in float64 — exact products, no
overflow — and summed per tensor with one `index_add_`. They are a small share of the bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from normscope.engine.group import GroupInput, GroupSums

if TYPE_CHECKING:  # pragma: no cover
    import torch


def reduce_small(group: GroupInput) -> GroupSums:
    """Every quantity of a group of small tensors, exactly, in float64.

    Args:
        group: CPU or CUDA tensors of fewer than `chunking.CHUNK` elements each, any float dtype.

    Returns:
        The group's per-entry sums and non-finite counts.
    """
    import torch  # lazy: a group of tensors has imported torch; an in-place run never does

    device = group.weight[0].device
    numels = torch.tensor([t.numel() for t in group.weight], dtype=torch.int64)
    owner = torch.repeat_interleave(torch.arange(len(group.weight)), numels).to(device)
    n = len(group.weight)

    def flat(stream: Sequence[torch.Tensor]) -> torch.Tensor:
        # one conversion for the stream, not one per tensor (cat promotes mixed dtypes exactly)
        return torch.cat([t.reshape(-1) for t in stream]).double()

    def per_entry(values: torch.Tensor) -> list[float]:
        out = torch.zeros(n, dtype=values.dtype, device=device)
        return out.index_add_(0, owner, values).cpu().tolist()

    x = flat(group.weight)
    sums = {"norm_sq": per_entry(x * x)}
    if group.prev is not None:
        y = flat(group.prev)
        sums["dot"] = per_entry(x * y)
        sums["diff_sq"] = per_entry((y - x).square())
    if group.buf is not None:
        m = flat(group.buf)
        sums["buf_dot"] = per_entry(x * m)
        sums["buf_norm_sq"] = per_entry(m * m)
    if group.sq is not None:
        sums["sq_sum"] = per_entry(flat(group.sq))
    nonfinite = per_entry((~torch.isfinite(x)).to(torch.int64))
    return GroupSums(sums, [int(c) for c in nonfinite], group.quantities())
