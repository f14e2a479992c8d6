"""The fused CPU kernel: all of a group's sums in one pass per tensor, float64, built with the package.

torch has no single kernel for "sum x², x·y, (y−x)², x·m, m², v in float64 from bf16 inputs": the
row-block path (`reduce._reduce_blocks`) spends ~9 passes over each block to get them, which makes
the engine compute-bound below the page-cache read rate on small machines. `_fused.c` reads each
element once; the engine's worker threads call it through ctypes, which releases the GIL.

The kernel is the extension module `normscope.engine._fused`, compiled when the wheel or the
editable install is built (setup.py) and imported like any other module of the package: nothing
is compiled, cached or loaded from elsewhere at run time. An install built without a C compiler
has no such module; the caller then gets None and uses the torch path, which gives the same sums
to 1e-6, as it does for an unsupported dtype or a non-CPU tensor. `NORMSCOPE_FUSED=0` turns the
kernel off. `kernel_status()` says which path an install takes and why (`normscope --version`).
"""

from __future__ import annotations

import bisect
import ctypes
import dataclasses
import functools
import importlib.util
import itertools
import logging
import operator
import os
from collections.abc import Callable, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any

from normscope._native import untrusted
from normscope._torch_seen import imported_torch, tensor_type
from normscope.engine.group import GroupInput, GroupSums
from normscope.engine.workers import Runner
from normscope.file_reads import FileReader

if TYPE_CHECKING:  # pragma: no cover
    from concurrent.futures import Future

    import numpy as np
    import torch

log = logging.getLogger(__name__)

MODULE = "normscope.engine._fused"
ABI = 3
# Columns of the kernel's output rows, in `_fused.c`'s order.
COLUMNS = ("norm_sq", "dot", "diff_sq", "buf_dot", "buf_norm_sq", "sq_sum")
# Longer tensors are cut into pieces so both workers get work from a single large matrix.
PIECE_ELEMENTS = 1 << 22
# The kernel's entry points (`_fused.c`), called at the addresses its module publishes.
_REDUCE = ctypes.CFUNCTYPE(None, ctypes.c_int64, *[ctypes.c_void_p] * 10)
_REDUCE_GUARDED = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int64, *[ctypes.c_void_p] * 10)
_GUARD_INSTALL = ctypes.CFUNCTYPE(ctypes.c_int)
_CHAIN_ARGS = (ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
               ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)  # fmt: skip
_CHAIN = ctypes.CFUNCTYPE(None, *_CHAIN_ARGS)
_CHAIN_GUARDED = ctypes.CFUNCTYPE(ctypes.c_int, *_CHAIN_ARGS)


class VanishedPage(Exception):
    """The kernel read a page of a mapped file that is no longer there: the file was cut short
    while it was mapped (the caller names it, see `file_stamps`)."""


class FusedKernel:
    """The kernel; `reduce` runs one call over arrays describing many tensors."""

    def __init__(self, module: Any) -> None:
        # guarded where the handler can be installed (see `_fused.c`): a vanished page of a mapped
        # file raises VanishedPage instead of ending the process with SIGBUS
        self._guarded = _GUARD_INSTALL(module.guard_install_address)() == 0
        if self._guarded:
            self._reduce = _REDUCE_GUARDED(module.reduce_guarded_address)
            self._chain = _CHAIN_GUARDED(module.reduce_chain_guarded_address)
        else:
            self._reduce = _REDUCE(module.reduce_address)
            self._chain = _CHAIN(module.reduce_chain_address)

    def reduce(self, count: int, numel: int, streams: Sequence[tuple[int, int] | None],
               out: int) -> None:
        """`numel`, `out` and each stream's (pointers, dtype codes) are addresses of arrays."""
        args: list[int | None] = []
        for stream in streams:
            args.extend(stream if stream is not None else (None, None))
        if self._reduce(count, numel, *args, out) and self._guarded:
            raise VanishedPage("a page of a mapped file vanished while the kernel read it")

    def reduce_chain(self, count: int, numel: int, snapshots: int, first: int, stride: int,
                     pointers: int, codes: int, out: int) -> None:  # fmt: skip
        """The same pieces in `snapshots` consecutive snapshots, each against the one before
        (`_fused.c`, `normscope_reduce_chain`): `pointers` (int64) and `codes` (int32) hold
        `snapshots` rows of `stride` entries, `out` as many rows of `stride` x COLUMNS sums;
        `count` entries of each row from the addresses given are reduced, in the rows from
        `first` on (the rows before are read only as the previous of the next)."""
        if self._chain(count, numel, snapshots, first, stride, pointers, codes, out) and (
                self._guarded):
            raise VanishedPage("a page of a mapped file vanished while the kernel read it")


@dataclasses.dataclass(frozen=True)
class KernelStatus:
    """Whether the fused kernel is in use, and if not, why (one line for a user)."""

    active: bool
    detail: str


@functools.lru_cache(maxsize=1)
def _load(disabled: bool) -> tuple[FusedKernel | None, KernelStatus]:
    if disabled:
        return None, KernelStatus(False, "turned off by NORMSCOPE_FUSED=0")
    try:
        spec = importlib.util.find_spec(MODULE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        return None, KernelStatus(
            False, "not built into this install (no C compiler when it was built)")
    refused = untrusted(spec.origin)
    if refused is not None:
        return None, KernelStatus(False, f"not loaded: {refused}")
    try:
        # lazy: the native module, absent from an install built without a C compiler
        from normscope.engine import _fused  # type: ignore[attr-defined]
    except ImportError as exc:
        return None, KernelStatus(False, f"cannot be loaded ({exc})")
    if getattr(_fused, "ABI", None) != ABI:
        return None, KernelStatus(False, "built from another version of normscope; reinstall it")
    return FusedKernel(_fused), KernelStatus(True, f"active ({spec.origin})")


def _disabled() -> bool:
    return os.environ.get("NORMSCOPE_FUSED", "1").strip().lower() in ("0", "false", "no")


def fused_kernel() -> FusedKernel | None:
    """The kernel; None where this install has none or it is turned off (module docstring)."""
    kernel, status = _load(_disabled())
    if kernel is None:
        _say_once(status.detail)
    return kernel


def kernel_status() -> KernelStatus:
    return _load(_disabled())[1]


@functools.cache
def _say_once(detail: str) -> None:
    log.info("fused CPU kernel %s; using the torch kernels (same results, slower)", detail)


def dtype_codes() -> dict[torch.dtype | str, int]:
    """The kernel's dtype codes, by torch dtype (tensors) and by name (refs)."""
    torch = imported_torch()
    if torch is None:  # no tensor exists without torch: refs name their dtypes
        return dict(_CODES)
    return {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3, **_CODES}


_CODES = {"float32": 0, "float64": 1, "bfloat16": 2, "float16": 3}


_ITEMSIZE = (4, 8, 2, 2)  # by dtype code


def takes_as_is(tensor: torch.Tensor) -> bool:
    """Whether the kernel reads `tensor` where it lies (behind its SIGBUS guard): a contiguous
    CPU tensor of a dtype it has a code for. Anything else `start_fused` copies or declines, and
    torch's kernels, which have no guard, would read it."""
    return tensor.dtype in _kernel_dtypes() and tensor.is_cpu and tensor.is_contiguous()


@functools.cache
def _kernel_dtypes() -> frozenset[Any]:
    return frozenset(dtype_codes())


class _Declined(Exception):
    """A stream the kernel cannot read (a dtype without a code, a tensor not on the CPU)."""


@dataclasses.dataclass(frozen=True)
class _Stream:
    """One stream of a group as the kernel reads it: per entry its address, dtype and length,
    and `keep`, what owns that memory (tensors, made contiguous where needed; refs, which keep
    their mapping) until the kernel has returned, for the kernel reads raw memory."""

    pointers: list[int]
    dtypes: list[Any]
    numels: list[int]
    keep: list[Any]


@dataclasses.dataclass(frozen=True)
class _Readable:
    """What the kernel reads: its dtype codes (by torch dtype and by name) and the tensor type
    (torch.Tensor where torch is imported; anything else in a stream is a ref)."""

    codes: dict[Any, int]
    tensor: type


@dataclasses.dataclass(frozen=True)
class _Pieces:
    """What the kernel is called on: (entry, start, length) per piece. One piece per entry,
    unless an entry is longer than PIECE_ELEMENTS: then every entry is cut into pieces of at
    most that many elements (`split`), so that one large matrix still feeds every worker."""

    entries: int
    owner: Sequence[int]
    starts: Sequence[int]
    lengths: Sequence[int]
    split: bool

    @classmethod
    def of(cls, numels: Sequence[int]) -> _Pieces:
        entries = len(numels)
        if max(numels, default=0) <= PIECE_ELEMENTS:
            return cls(entries, range(entries), [0] * entries, numels, split=False)
        owner, starts, lengths = [], [], []
        for i, n in enumerate(numels):
            for lo in range(0, max(n, 1), PIECE_ELEMENTS):
                owner.append(i)
                starts.append(lo)
                lengths.append(min(PIECE_ELEMENTS, n - lo))
        return cls(entries, owner, starts, lengths, split=True)


def start_fused(group: GroupInput, runner: Runner) -> Callable[[], GroupSums] | None:
    """Start the kernel on a group.

    Args:
        group: the group's streams (weights, and the previous snapshot's, momentum and second
            moment where present), tensors or refs read in place.
        runner: the threads the kernel runs on.

    Returns:
        What waits for the kernel and collects its sums, or None where the kernel does not apply
        (no kernel, a dtype without a code, a tensor not on the CPU). The caller's thread is
        free meanwhile: the engine does the next item's Python-side bookkeeping while the
        kernel runs.
    """
    kernel = fused_kernel()
    if kernel is None:
        return None
    readable = _Readable(dtype_codes(), tensor_type())
    try:
        streams = [_describe(s, readable) for s in (group.weight, group.prev, group.buf, group.sq)]
    except _Declined:
        return None
    weights = streams[0]
    assert weights is not None  # a group always has weights
    pieces = _Pieces.of(weights.numels)
    arrays = [None if s is None else _kernel_arrays(s, pieces, readable.codes) for s in streams]
    numel = _int64(pieces.lengths)
    out = _zeros(len(pieces.lengths))
    running = launch(kernel, runner, numel, arrays, out)
    return functools.partial(_collect, group, running, pieces, out, streams)


def _describe(stream: Sequence[Any] | None, readable: _Readable) -> _Stream | None:
    """The stream's addresses, dtypes and lengths, whole columns at a time (map over C
    methods): a group can hold tens of thousands of small tensors. None for an absent stream.

    Raises:
        _Declined: where the kernel cannot read the stream.
    """
    if stream is None:
        return None
    stream = list(stream)
    tensor = readable.tensor
    tensors = sum(map(isinstance, stream, repeat(tensor)))
    if tensors == 0:  # refs read in place (see `snapshot.TensorRef`)
        return _describe_refs(stream, readable.codes)
    if tensors < len(stream):  # tensors and refs in one stream: rare, so build tensors
        stream = [t if isinstance(t, tensor) else t.load() for t in stream]
    return _describe_tensors(stream, readable.codes)


def _describe_refs(refs: list[Any], codes: dict[Any, int]) -> _Stream:
    dtypes = list(map(_DTYPE, refs))
    if not set(dtypes) <= codes.keys():
        raise _Declined
    return _Stream(list(map(_ADDRESS, refs)), dtypes, list(map(_NUMEL_FIELD, refs)), refs)


def _describe_tensors(tensors: list[torch.Tensor], codes: dict[Any, int]) -> _Stream:
    if not all(map(_IS_CPU, tensors)) or not set(map(_DTYPE, tensors)) <= codes.keys():
        raise _Declined
    if not all(map(_IS_CONTIGUOUS, tensors)):
        tensors = [t if t.is_contiguous() else t.contiguous() for t in tensors]
    return _Stream(list(map(_DATA_PTR, tensors)), list(map(_DTYPE, tensors)),
                   list(map(_NUMEL, tensors)), tensors)  # fmt: skip


def _kernel_arrays(stream: _Stream, pieces: _Pieces, codes: dict[Any, int]
                   ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The stream's (addresses int64, dtype codes int32) per piece, as the kernel takes them.
    numpy's: from a list of ints, several times quicker to make than torch's, which matters
    with a group per (bucket, snapshot)."""
    # lazy: numpy is start-up time for `normscope --version`, which imports this module
    import numpy as np

    pointers, dtypes = stream.pointers, stream.dtypes
    if pieces.split:
        pointers = [pointers[e] + s * _ITEMSIZE[codes[dtypes[e]]]
                    for e, s in zip(pieces.owner, pieces.starts)]  # fmt: skip
        dtypes = [dtypes[e] for e in pieces.owner]
    count = len(pieces.lengths)
    if len(set(dtypes)) <= 1:  # one dtype: no per-tensor list
        type_codes = np.full(count, codes[dtypes[0]] if dtypes else 0, dtype=np.int32)
    else:
        type_codes = np.array([codes[d] for d in dtypes], dtype=np.int32)
    return np.array(pointers, dtype=np.int64), type_codes


def _int64(values: Sequence[int]) -> np.ndarray:
    # lazy: numpy is start-up time for `normscope --version`, which imports this module
    import numpy as np

    return np.array(values, dtype=np.int64)


def _zeros(rows: int) -> np.ndarray:
    """The kernel's output: one row of COLUMNS sums per piece, added to."""
    # lazy: numpy is start-up time for `normscope --version`, which imports this module
    import numpy as np

    return np.zeros((rows, len(COLUMNS)), dtype=np.float64)


def _collect(group: GroupInput, running: list[Future[None]], pieces: _Pieces, out: np.ndarray,
             streams: list[_Stream | None]) -> GroupSums:  # fmt: skip
    """Wait for the kernel (`streams` keep what it reads alive until then), sum the pieces of
    each entry, count NaN/Inf where there are any."""
    # lazy: numpy is start-up time for `normscope --version`, which imports this module
    import numpy as np

    for future in running:
        future.result()
    sums = out
    if pieces.split:
        sums = np.zeros((pieces.entries, len(COLUMNS)), dtype=np.float64)
        np.add.at(sums, np.array(pieces.owner, dtype=np.int64), out)
    nonfinite = nonfinite_counts(sums[:, 0], streams[0].keep)
    quantities = group.quantities()
    columns = sums[:, [COLUMNS.index(q) for q in quantities]].T.tolist()
    return GroupSums(dict(zip(quantities, columns)), nonfinite, quantities)


def nonfinite_counts(norm_sq: np.ndarray, weights: Sequence[Any]) -> list[int]:
    """Each entry's count of NaN/Inf weights: 0 where its sum of squares is finite (the kernel
    accumulated it, so the entry holds none), counted in the rare others. `weights` are tensors
    or refs, read for the count into memory of their own (`file_reads`): torch counts them,
    and its kernels have no SIGBUS guard."""
    # lazy: numpy is start-up time for `normscope --version`, which imports this module
    import numpy as np

    counts = [0] * len(weights)
    rare = np.flatnonzero(~np.isfinite(norm_sq)).tolist()
    if not rare:
        return counts
    import torch  # lazy: only a weight holding NaN or Inf needs torch, to count them

    with FileReader() as reader:
        for i in rare:
            weight = weights[i]
            weight = reader.tensor(weight) if isinstance(weight, torch.Tensor) else reader.ref(weight)
            counts[i] = int((~torch.isfinite(weight)).sum())
    return counts


def launch(kernel: FusedKernel, runner: Runner, numel: np.ndarray,
           streams: Sequence[tuple[np.ndarray, np.ndarray] | None], out: np.ndarray
           ) -> list[Future[None]]:  # fmt: skip
    """Run the kernel over all pieces on the runner's threads, in spans of about equal length.
    `numel` (int64), each stream's (addresses int64, dtype codes int32) and `out` (float64,
    pieces x COLUMNS) are contiguous arrays the caller keeps alive, with what they point to,
    until every future is done."""

    def run(lo: int, hi: int) -> None:
        kernel.reduce(
            hi - lo,
            numel.ctypes.data + 8 * lo,
            [None if a is None else (a[0].ctypes.data + 8 * lo, a[1].ctypes.data + 4 * lo)
             for a in streams],
            out.ctypes.data + 8 * len(COLUMNS) * lo,
        )

    spans = _balanced_spans(numel.tolist(), runner.workers)
    return [runner.submit(run, lo, hi) for lo, hi in spans]


_IS_CPU = operator.attrgetter("is_cpu")
_DTYPE = operator.attrgetter("dtype")
_IS_CONTIGUOUS = operator.methodcaller("is_contiguous")
_NUMEL = operator.methodcaller("numel")
_DATA_PTR = operator.methodcaller("data_ptr")
_ADDRESS = operator.attrgetter("address")
_NUMEL_FIELD = operator.attrgetter("numel")  # a ref's numel is a field, a tensor's a method


def _balanced_spans(lengths: Sequence[int], parts: int) -> list[tuple[int, int]]:
    """Contiguous ranges of pieces with about equal element counts, at most `parts` of them."""
    ends = list(itertools.accumulate(lengths))
    total = ends[-1] if ends else 0
    if parts <= 1 or total == 0:
        return [(0, len(lengths))]
    # the k-th span ends after the first piece whose running total reaches k/parts of the whole
    cuts = [0]
    for k in range(1, parts):
        cut = bisect.bisect_left(ends, -(-total * k // parts)) + 1
        if cuts[-1] < cut < len(lengths):
            cuts.append(cut)
    cuts.append(len(lengths))
    return list(itertools.pairwise(cuts))
