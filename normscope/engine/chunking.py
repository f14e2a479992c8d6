"""Fixed-size chunk rows: how a list of flat tensors is laid out as rows of a 2-D work block.

Every tensor ("entry") is cut into rows of `CHUNK` elements; its last row is zero-padded, so every
row belongs to exactly one entry and a row-wise reduction gives per-entry partial sums. Zero padding
changes no sum of squares, product or difference. Entries of a group are copied into a reusable
`[rows, CHUNK]` block in one `torch._foreach_copy_` call, which also upcasts bf16/fp16 to the work
dtype; a large tensor is simply many rows, and thousands of small ones share one block.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

# Elements per row. Small enough that a fp32 row sum (torch's cascade summation) is accurate to
# ~1e-8 and that padding thousands of tiny tensors costs little; large enough that per-row
# bookkeeping is negligible for big tensors.
CHUNK = 4096


@dataclass(frozen=True)
class RowLayout:
    """Where each entry's rows start in the packed row space (entries with 0 elements get 0 rows)."""

    numels: tuple[int, ...]
    row_starts: tuple[int, ...]
    total_rows: int
    chunk: int = CHUNK

    def rows_of(self, entry: int) -> int:
        return -(-self.numels[entry] // self.chunk)

    def owners(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """For every row, the index of the entry it belongs to (int64, on `device`)."""
        import torch  # lazy: the torch kernels' module; a run read in place needs no torch

        counts = torch.tensor(
            [self.rows_of(i) for i in range(len(self.numels))], dtype=torch.int64
        )
        owners = torch.repeat_interleave(torch.arange(len(self.numels)), counts)
        return owners.to(device)

    def entry_at_row(self, row: int) -> int:
        """The entry owning `row` (skipping empty entries that share its start)."""
        return bisect.bisect_right(self.row_starts, row) - 1


def row_layout(numels: Sequence[int], chunk: int = CHUNK) -> RowLayout:
    starts, row = [], 0
    for n in numels:
        starts.append(row)
        row += -(-n // chunk)
    return RowLayout(tuple(numels), tuple(starts), row, chunk)


def fill_rows(
    block: torch.Tensor,
    layout: RowLayout,
    sources: Sequence[torch.Tensor],
    r0: int,
    r1: int,
) -> None:
    """Copy rows `r0:r1` of the packed layout of flat `sources` into `block[: r1 - r0]`.

    One `_foreach_copy_` moves (and upcasts) every overlapping segment; each entry's partial last
    row is zero-filled with one `_foreach_zero_`.
    """
    import torch  # lazy: the torch kernels' module; a run read in place needs no torch

    chunk = layout.chunk
    flat = block[: r1 - r0].reshape(-1)
    dst, src, pads = [], [], []
    entry = max(layout.entry_at_row(r0), 0)
    while entry < len(layout.numels) and layout.row_starts[entry] < r1:
        first, numel = layout.row_starts[entry], layout.numels[entry]
        lo, hi = max(r0, first), min(r1, first + layout.rows_of(entry))
        if hi > lo:
            s_lo, s_hi = (lo - first) * chunk, min((hi - first) * chunk, numel)
            d_lo = (lo - r0) * chunk
            d_hi = d_lo + (s_hi - s_lo)
            dst.append(flat[d_lo:d_hi])
            src.append(sources[entry][s_lo:s_hi])
            if d_hi < (hi - r0) * chunk:
                pads.append(flat[d_hi : (hi - r0) * chunk])
        entry += 1
    if dst:
        torch._foreach_copy_(dst, src)
    if pads:
        torch._foreach_zero_(pads)
