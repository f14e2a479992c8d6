"""Buckets of refs read in place, as arrays from the reader to the accumulator.

When every piece of a (bucket, snapshot) is a whole ref with an `address` (a torch file opened by
`sources._fast_torch_zip`) and none has optimizer state, the reader describes the bucket with
three numpy arrays (addresses, dtype codes, lengths), the fused kernel reads them with the
previous snapshot's arrays as its `prev` stream, and its sums go to the accumulator as one array:
no Python object per piece between the reader and the stats. A ResNet-shaped bucket holds
thousands of pieces, and the per-piece lists of the general path (grouping, kernel arguments,
rows of totals) cost as much as the arithmetic. Anything else takes the general
path (`driver._start_work`), which gives the same sums.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from normscope.engine.fused import (
    COLUMNS,
    PIECE_ELEMENTS,
    _balanced_spans,
    dtype_codes,
    fused_kernel,
    launch,
    nonfinite_counts,
)
from normscope.engine.workers import Runner


@dataclass(frozen=True)
class InPlaceColumns:
    """A bucket's refs as the kernel reads them, per kernel piece: the address of its first byte,
    its dtype code and its number of elements (int64, int32, int64). One piece per ref, unless a
    ref is longer than PIECE_ELEMENTS: then every ref is cut into pieces of at most that many
    elements, as the general path cuts them (`fused._Pieces`), and `owner` says whose each is."""

    addresses: np.ndarray
    codes: np.ndarray
    numels: np.ndarray
    owner: np.ndarray | None = None  # int64 ref index per piece, where refs were cut
    entries: int = 0  # refs (where cut)

    def per_ref(self, sums: np.ndarray) -> np.ndarray:
        """Sums per piece → sums per ref, added in piece order as the general path adds them."""
        if self.owner is None:
            return sums
        total = np.zeros((self.entries, sums.shape[1]), dtype=np.float64)
        np.add.at(total, self.owner, sums)
        return total


_ITEMSIZE = np.array([4, 8, 2, 2], dtype=np.int64)  # by dtype code


@dataclass(frozen=True)
class InPlaceLayout:
    """What of a bucket's `InPlaceColumns` its refs' dtypes and sizes decide: the same in every
    snapshot of one model, so found once per bucket (`in_place_layout`) and given each
    snapshot's addresses (`at`). Per kernel piece: its dtype code and number of elements; where
    refs were cut, each piece's owner and its offset in bytes from its ref's address."""

    codes: np.ndarray
    numels: np.ndarray
    owner: np.ndarray | None = None
    offsets: np.ndarray | None = None
    entries: int = 0  # refs (where cut)

    def at(self, addresses: Sequence[int]) -> InPlaceColumns:
        """The columns of refs of this layout that lie at `addresses` (one per ref)."""
        where = np.array(addresses, dtype=np.int64)
        if self.owner is None:
            return InPlaceColumns(where, self.codes, self.numels)
        return InPlaceColumns(where[self.owner] + self.offsets, self.codes, self.numels, self.owner,
                              self.entries)  # fmt: skip


def in_place_layout(dtypes: Sequence[str], numels: Sequence[int]) -> InPlaceLayout | None:
    """The layout of refs of `dtypes` (names) and `numels`; None where a dtype is not the
    kernel's. A ref longer than PIECE_ELEMENTS makes every ref cut into pieces of at most that
    many elements (an empty ref is one empty piece), as the general path cuts them
    (`fused._Pieces`), so that one large matrix still feeds every worker."""
    codes = dtype_codes()
    try:
        kinds = np.array(list(map(codes.__getitem__, dtypes)), dtype=np.int32)
    except KeyError:
        return None
    lengths = np.array(numels, dtype=np.int64)
    if not len(lengths) or int(lengths.max()) <= PIECE_ELEMENTS:
        return InPlaceLayout(kinds, lengths)
    cuts = np.maximum(-(-lengths // PIECE_ELEMENTS), 1)
    owner = np.repeat(np.arange(len(lengths), dtype=np.int64), cuts)
    first = np.repeat(np.cumsum(cuts) - cuts, cuts)
    start = (np.arange(len(owner), dtype=np.int64) - first) * PIECE_ELEMENTS
    return InPlaceLayout(kinds[owner], np.minimum(PIECE_ELEMENTS, lengths[owner] - start), owner,
                         start * _ITEMSIZE[kinds[owner]], len(lengths))  # fmt: skip


@dataclass(frozen=True)
class BlockSums:
    """The kernel's sums for a bucket of one snapshot: `sums[i, k]` for piece i and `COLUMNS[k]`
    (dot and diff only where `with_prev`), and each piece's count of non-finite weights."""

    sums: np.ndarray
    nonfinite: list[int]
    with_prev: bool

    def column(self, name: str) -> np.ndarray:
        return self.sums[:, COLUMNS.index(name)]


def start_in_place(
    weight: InPlaceColumns,
    prev: InPlaceColumns | None,
    refs: Sequence[Any],
    runner: Runner,
) -> Callable[[], BlockSums] | None:
    """Start the kernel over a bucket (`refs`: the weight refs, kept alive by the caller with
    `prev`'s until the result is collected); None without the kernel."""
    kernel = fused_kernel()
    if kernel is None:
        return None
    out = np.zeros((len(weight.numels), len(COLUMNS)), dtype=np.float64)
    streams = [(weight.addresses, weight.codes),
               None if prev is None else (prev.addresses, prev.codes), None, None]  # fmt: skip
    running = launch(kernel, runner, weight.numels, streams, out)

    def finish() -> BlockSums:
        for future in running:
            future.result()
        sums = weight.per_ref(out)
        return BlockSums(sums, nonfinite_counts(sums[:, 0], refs), prev is not None)

    return finish


def start_in_place_chain(
    columns: Sequence[InPlaceColumns],
    refs: Sequence[Sequence[Any]],
    runner: Runner,
    previous: InPlaceColumns | None = None,
) -> Callable[[], list[BlockSums]] | None:
    """Start the kernel over a bucket in consecutive snapshots at once, each against the one
    before: `columns[s]` describes the bucket in snapshot s, `previous` (if any) in the snapshot
    before the first, all with the same pieces and lengths; `refs[s]` are the weight refs of
    snapshot s, kept alive by the caller (with `previous`'s) until the result is collected.

    Each chunk of a piece is reduced in every snapshot in turn, so the previous snapshot's bytes
    are read from the cache, not from memory again; per snapshot the sums are the same bits as
    `start_in_place`'s. Returns what waits for the sums, one `BlockSums` per `columns` entry;
    None without the kernel."""
    kernel = fused_kernel()
    if kernel is None:
        return None
    rows = [previous, *columns] if previous is not None else list(columns)
    first = len(rows) - len(columns)
    count = len(columns[0].numels)
    pointers = np.stack([c.addresses for c in rows])
    codes = np.stack([c.codes for c in rows])
    numels = columns[0].numels
    out = np.zeros((len(rows), count, len(COLUMNS)), dtype=np.float64)
    width = len(COLUMNS) * 8

    def run(lo: int, hi: int) -> None:
        kernel.reduce_chain(hi - lo, numels.ctypes.data + 8 * lo, len(rows), first, count,
                            pointers.ctypes.data + 8 * lo, codes.ctypes.data + 4 * lo,
                            out.ctypes.data + width * lo)  # fmt: skip

    # `run` holds the arrays the kernel reads until it has run
    running = [runner.submit(run, lo, hi)
               for lo, hi in _balanced_spans(numels.tolist(), runner.workers)]  # fmt: skip

    def finish() -> list[BlockSums]:
        for future in running:
            future.result()
        blocks = []
        for s in range(first, len(rows)):
            sums = columns[0].per_ref(out[s])
            blocks.append(BlockSums(sums, nonfinite_counts(sums[:, 0], refs[s - first]), s > 0))
        return blocks

    return finish
