"""The arithmetic: per-entry sums of squares, products and squared differences, accurate to float64.

A group is a list of same-device tensors ("entries") with the same set of companion streams:
the previous snapshot's tensor (`prev`), an optimizer buffer (`buf`: SGD momentum or Adam exp_avg)
and Adam's `exp_avg_sq` (`sq`). Entries are packed into `[block_rows, CHUNK]` blocks (see
`chunking`), each quantity is reduced row-wise in the work dtype (fp32: exact products of bf16/fp16
inputs, cascade summation over 4096 elements) and the per-row results are summed per entry in
float64 with one `index_add_`. A few kernels per block, however many tensors the group holds.

Dot products of float32 inputs that are nearly orthogonal are redone in float64 (a rounded
product's error is relative to |x||y|, not to <x, y>).

Dot products involving float32 inputs are reduced in float64 (`work_dtype_for`).

Non-finite values need no extra pass over the data: a row's sum of squares is non-finite exactly
when the row holds a NaN/Inf (or a square overflowed), so only those rare rows are recounted and
recomputed in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from normscope._torch_seen import tensor_type
from normscope.engine.chunking import CHUNK, RowLayout, fill_rows, row_layout
from normscope.engine.fused import fused_kernel, start_fused
from normscope.engine.group import GroupInput, GroupSums
from normscope.engine.small import reduce_small
from normscope.engine.workers import Inline, Runner

if TYPE_CHECKING:  # pragma: no cover
    import torch

# Per stream: a CPU block stays in the L3 cache between its kernels, and is large enough that the
# ~15 Python-level torch calls per block are a small share of it; 2 MiB was the fastest of
# 256 KiB–8 MiB (docs/engine.md, "CPU block size").
CPU_BLOCK_BYTES = 2 << 20
# 16M elements per kernel: CUDA launch overhead is negligible.
CUDA_BLOCK_ROWS = 4096


def work_dtype_for(group: GroupInput) -> torch.dtype:
    """The dtype a group is reduced in by the torch kernels.

    float32 when every product is exact in it: all inputs 16-bit, or a float32 weight alone (sums of
    squares have positive terms, so rounded products keep their relative accuracy). A dot product
    of float32 tensors is computed in float64: its rounding error is relative to |x||y|, not to
    <x, y>, and <w, momentum> of a scale-invariant layer is nearly orthogonal.

    Args:
        group: a group of tensors.

    Returns:
        torch.float32 or torch.float64.
    """
    import torch  # lazy: torch only once a group holds tensors (an in-place run never imports it)

    inputs = [
        t
        for s in (group.weight, group.prev, group.buf, group.sq)
        if s is not None
        for t in s
    ]
    if any(t.dtype == torch.float64 for t in inputs):
        return torch.float64
    has_dot = group.prev is not None or group.buf is not None
    if has_dot and any(t.dtype.itemsize > 2 for t in inputs):
        return torch.float64
    return torch.float32


def start_group(
    group: GroupInput, runner: Runner, *, block_rows: int | None = None
) -> Callable[[], GroupSums]:
    """Start reducing one group; call the result for its sums.

    On CPU the fused kernel (`fused.start_fused`) takes the whole group when it can and runs on
    the runner's threads while the caller goes on; otherwise the torch kernels run now.

    Args:
        group: the group; refs the fused kernel reads in place are read for torch's kernels.
        runner: the worker threads (`workers.CpuWorkers`) or this thread (`workers.Inline`).
        block_rows: rows per block of the torch kernels (the fused kernel has none).

    Returns:
        What waits for the sums and returns them.
    """
    first = group.weight[0] if group.weight else None
    declined = False
    if first is not None and (not isinstance(first, tensor_type()) or first.device.type == "cpu"):
        finish = start_fused(group, runner)
        if finish is not None:
            return finish
        # a group the kernel has no code for (float8): views of a mapping left for it, such as
        # the previous snapshot's tensors, are read into memory of their own for torch's kernels
        declined = fused_kernel() is not None
    result = _reduce_torch(group.loaded(copy_mapped=declined).flat(), block_rows, runner)
    return lambda: result


def reduce_group(
    group: GroupInput, *, block_rows: int | None = None, runner: Runner | None = None
) -> GroupSums:
    """Reduce one group; see the module docstring for the scheme and its accuracy.

    Args:
        group: the group.
        block_rows: rows per block of the torch kernels (the fused kernel has none).
        runner: spreads the work over worker threads (`workers.CpuWorkers`); None: this thread.

    Returns:
        The group's sums.
    """
    return start_group(group, runner or Inline(), block_rows=block_rows)()


def _reduce_torch(group: GroupInput, block_rows: int | None, runner: Runner) -> GroupSums:
    """The torch kernels: row blocks, and tensors shorter than a chunk row through
    `small.reduce_small` instead."""
    small = [i for i, t in enumerate(group.weight) if t.numel() < CHUNK]
    if not small:
        return _reduce_blocks(group, block_rows, runner)
    if len(small) == len(group.weight):
        return runner.call(reduce_small, group)
    large = [i for i, t in enumerate(group.weight) if t.numel() >= CHUNK]
    parts = [
        (large, _reduce_blocks(group.subset(large), block_rows, runner)),
        (small, runner.call(reduce_small, group.subset(small))),
    ]
    quantities = group.quantities()
    sums: dict[str, list[float]] = {q: [0.0] * len(group.weight) for q in quantities}
    nonfinite = [0] * len(group.weight)
    for indices, part in parts:
        for j, i in enumerate(indices):
            for q in quantities:
                sums[q][i] = part.sums[q][j]
            nonfinite[i] = part.nonfinite[j]
    return GroupSums(sums, nonfinite, quantities)


def _reduce_blocks(
    group: GroupInput, block_rows: int | None, runner: Runner
) -> GroupSums:
    """The row-block path: pack, reduce row-wise, sum rows per tensor in float64."""
    import torch  # lazy: torch only once a group holds tensors (an in-place run never imports it)

    device = group.weight[0].device
    work_dtype = work_dtype_for(group)
    if block_rows is None:
        block_rows = (
            CUDA_BLOCK_ROWS
            if device.type == "cuda"
            else max(1, CPU_BLOCK_BYTES // (CHUNK * work_dtype.itemsize))
        )
    layout = row_layout([t.numel() for t in group.weight])
    quantities = group.quantities()
    rows = torch.empty(
        len(quantities), layout.total_rows, dtype=work_dtype, device=device
    )
    spans = split_rows(layout.total_rows, block_rows, runner.workers)
    runner.map(
        _reduce_rows, [(group, layout, rows, block_rows, lo, hi) for lo, hi in spans]
    )
    return runner.call(_per_entry, group, layout, rows, quantities)


def split_rows(total_rows: int, block_rows: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous row spans, whole blocks each, one per worker (fewer when there is little work).

    Args:
        total_rows: the rows to share out.
        block_rows: rows per block; a span holds whole blocks (the last one may be short).
        parts: the number of workers.

    Returns:
        (first, end) row ranges that cover every row in order.

    >>> split_rows(10, 4, 2)
    [(0, 4), (4, 10)]
    >>> split_rows(3, 4, 2)  # one block: one span
    [(0, 3)]
    """
    blocks = -(-total_rows // block_rows)
    parts = max(1, min(parts, blocks))
    spans, lo = [], 0
    for i in range(parts):
        hi = min(total_rows, (blocks * (i + 1) // parts) * block_rows)
        if hi > lo:
            spans.append((lo, hi))
        lo = hi
    return spans


def _per_entry(
    group: GroupInput,
    layout: RowLayout,
    rows: torch.Tensor,
    quantities: tuple[str, ...],
) -> GroupSums:
    """Row sums → float64 per-entry sums, after exact recomputation of non-finite rows."""
    import torch  # lazy: torch only once a group holds tensors (an in-place run never imports it)

    device = rows.device
    rows64 = rows.double()
    nonfinite = torch.zeros(len(group.weight), dtype=torch.int64, device=device)
    bad_rows = (~torch.isfinite(rows64).all(dim=0)).nonzero().flatten().tolist()
    for row in bad_rows:
        entry, values, count = _exact_row(group, layout, row)
        rows64[:, row] = torch.tensor(values, dtype=torch.float64, device=device)
        nonfinite[entry] += count
    sums = torch.zeros(
        len(quantities), len(group.weight), dtype=torch.float64, device=device
    )
    sums.index_add_(1, layout.owners(device), rows64)
    return GroupSums(
        dict(zip(quantities, sums.cpu().tolist())), nonfinite.cpu().tolist(), quantities
    )


def _reduce_rows(
    group: GroupInput,
    layout: RowLayout,
    rows: torch.Tensor,
    block_rows: int,
    first: int,
    last: int,
) -> None:
    """Fill `rows[q, r]` for r in first:last with the work-dtype sum of quantity q over chunk row r."""
    import torch  # lazy: torch only once a group holds tensors (an in-place run never imports it)

    shape = (min(block_rows, last - first), layout.chunk)
    scratch = {
        name: torch.empty(shape, dtype=rows.dtype, device=rows.device)
        for name, stream in (
            ("x", group.weight),
            ("y", group.prev),
            ("m", group.buf),
            ("v", group.sq),
            ("p", ()),
        )
        if stream is not None
    }
    for r0 in range(first, last, block_rows):
        r1 = min(r0 + block_rows, last)
        k = r1 - r0
        x, p = scratch["x"][:k], scratch["p"][:k]
        out = iter(rows[:, r0:r1])
        fill_rows(x, layout, group.weight, r0, r1)
        torch.mul(x, x, out=p)
        torch.sum(p, 1, out=next(out))
        if group.prev is not None:
            y = scratch["y"][:k]
            fill_rows(y, layout, group.prev, r0, r1)
            torch.mul(x, y, out=p)
            torch.sum(p, 1, out=next(out))
            torch.sub(y, x, out=p)
            p.mul_(p)
            torch.sum(p, 1, out=next(out))
        if group.buf is not None:
            m = scratch["m"][:k]
            fill_rows(m, layout, group.buf, r0, r1)
            torch.mul(x, m, out=p)
            torch.sum(p, 1, out=next(out))
            torch.mul(m, m, out=p)
            torch.sum(p, 1, out=next(out))
        if group.sq is not None:
            v = scratch["v"][:k]
            fill_rows(v, layout, group.sq, r0, r1)
            torch.sum(v, 1, out=next(out))


def _exact_row(
    group: GroupInput, layout: RowLayout, row: int
) -> tuple[int, list[float], int]:
    """Float64 recomputation of one row holding a non-finite value or an fp32 overflow.

    Returns the owning entry, the row's values for each quantity, and its non-finite element count.
    """
    import torch  # lazy: torch only once a group holds tensors (an in-place run never imports it)

    entry = layout.entry_at_row(row)
    lo = (row - layout.row_starts[entry]) * layout.chunk
    hi = min(lo + layout.chunk, layout.numels[entry])

    def part(stream: Sequence[torch.Tensor]) -> torch.Tensor:
        return stream[entry][lo:hi].double()

    x = part(group.weight)
    values = [torch.dot(x, x).item()]
    if group.prev is not None:
        y = part(group.prev)
        values += [torch.dot(x, y).item(), torch.dot(y - x, y - x).item()]
    if group.buf is not None:
        m = part(group.buf)
        values += [torch.dot(x, m).item(), torch.dot(m, m).item()]
    if group.sq is not None:
        values.append(part(group.sq).sum().item())
    return entry, values, int((~torch.isfinite(x)).sum().item())
