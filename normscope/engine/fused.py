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
import stat
from collections.abc import Callable, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any

from normscope._torch_seen import imported_torch, tensor_type
from normscope.engine.group import GroupInput, GroupSums
from normscope.engine.workers import Runner

if TYPE_CHECKING:  # pragma: no cover
    from concurrent.futures import Future

    import numpy as np
    import torch

log = logging.getLogger(__name__)

MODULE = "normscope.engine._fused"
ABI = 2
# Columns of the kernel's output rows, in `_fused.c`'s order.
COLUMNS = ("norm_sq", "dot", "diff_sq", "buf_dot", "buf_norm_sq", "sq_sum")
# Longer tensors are cut into pieces so both workers get work from a single large matrix.
PIECE_ELEMENTS = 1 << 22
# The kernel's entry points (`_fused.c`), called at the addresses its module publishes.
_REDUCE = ctypes.CFUNCTYPE(None, ctypes.c_int64, *[ctypes.c_void_p] * 10)
_REDUCE_GUARDED = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int64, *[ctypes.c_void_p] * 10)
_GUARD_INSTALL = ctypes.CFUNCTYPE(ctypes.c_int)


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
        else:
            self._reduce = _REDUCE(module.reduce_address)

    def reduce(self, count: int, numel: int, streams: Sequence[tuple[int, int] | None],
               out: int) -> None:
        """`numel`, `out` and each stream's (pointers, dtype codes) are addresses of arrays."""
        args: list[int | None] = []
        for stream in streams:
            args.extend(stream if stream is not None else (None, None))
        if self._reduce(count, numel, *args, out) and self._guarded:
            raise VanishedPage("a page of a mapped file vanished while the kernel read it")


@dataclasses.dataclass(frozen=True)
class KernelStatus:
    """Whether the fused kernel is in use, and if not, why (one line for a user)."""

    active: bool
    detail: str


def _untrusted(path: str) -> str | None:
    """Why a file, or the directory it is in, may hold code someone else put there (None: it
    cannot). Python imports whatever lies on its path; for native code normscope also asks that
    the file and its directory are owned by this user or by root and not writable by others."""
    if not hasattr(os, "getuid"):
        return None
    for target in (path, os.path.dirname(path)):
        try:
            st = os.stat(target)
        except OSError as exc:
            return f"cannot check {target}: {exc.strerror}"
        if st.st_uid not in (os.getuid(), 0):
            return f"{target} belongs to another user"
        if st.st_mode & stat.S_IWOTH:
            return f"{target} is writable by other users"
    return None


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
    refused = _untrusted(spec.origin)
    if refused is not None:
        return None, KernelStatus(False, f"not loaded: {refused}")
    try:
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


def start_fused(group: GroupInput, runner: Runner) -> Callable[[], GroupSums] | None:
    """Start the kernel on the runner's threads and return what waits for and collects its sums
    (None where the kernel does not apply). The caller's thread is free meanwhile: the engine
    does the next item's Python-side bookkeeping while the kernel runs."""
    import numpy as np

    tensor = tensor_type()
    kernel = fused_kernel()
    if kernel is None:
        return None
    codes = dtype_codes()
    # Per stream: its entries' addresses, dtypes and lengths, whole columns at a time (map over
    # C methods): a group can hold tens of thousands of small tensors. `keep` holds what owns the
    # memory (tensors, made contiguous where needed; refs, which keep their mapping) until the
    # calls have returned: the kernel reads raw memory.
    described: list[tuple[list[int], list[torch.dtype | str], list[int]] | None] = []
    keep: list[list[torch.Tensor] | None] = []
    for stream in (group.weight, group.prev, group.buf, group.sq):
        if stream is None:
            described.append(None)
            keep.append(None)
            continue
        stream = list(stream)
        tensors = sum(map(isinstance, stream, repeat(tensor)))
        if tensors == 0:  # refs read in place (see `snapshot.TensorRef`)
            dtypes = list(map(_DTYPE, stream))
            if not set(dtypes) <= codes.keys():
                return None
            described.append((list(map(_ADDRESS, stream)), dtypes, list(map(_NUMEL_FIELD, stream))))
            keep.append(stream)
            continue
        if tensors < len(stream):  # tensors and refs in one stream: rare, so build tensors
            stream = [t if isinstance(t, tensor) else t.load() for t in stream]
        if not all(map(_IS_CPU, stream)) or not set(map(_DTYPE, stream)) <= codes.keys():
            return None
        if not all(map(_IS_CONTIGUOUS, stream)):
            stream = [t if t.is_contiguous() else t.contiguous() for t in stream]
        described.append((list(map(_DATA_PTR, stream)), list(map(_DTYPE, stream)),
                          list(map(_NUMEL, stream))))  # fmt: skip
        keep.append(stream)
    entries = len(group.weight)
    numels = described[0][2]
    # Pieces: (entry, start, length); one per tensor, long tensors cut in PIECE_ELEMENTS.
    split = max(numels, default=0) > PIECE_ELEMENTS
    owner: Sequence[int] = range(entries)
    starts: Sequence[int] = [0] * entries
    lengths: Sequence[int] = numels
    if split:
        owner, starts, lengths = [], [], []
        for i, n in enumerate(numels):
            for lo in range(0, max(n, 1), PIECE_ELEMENTS):
                owner.append(i)
                starts.append(lo)
                lengths.append(min(PIECE_ELEMENTS, n - lo))
    count = len(owner)
    # The kernel's argument arrays are numpy's: from a list of ints, several times quicker to
    # make than torch's, which matters with a group per (bucket, snapshot).
    arrays: list[tuple[np.ndarray, np.ndarray] | None] = []
    for description in described:
        if description is None:
            arrays.append(None)
            continue
        pointers, dtypes, _ = description
        if split:
            pointers = [pointers[e] + s * _ITEMSIZE[codes[dtypes[e]]]
                        for e, s in zip(owner, starts)]  # fmt: skip
            dtypes = [dtypes[e] for e in owner]
        if len(set(dtypes)) <= 1:  # one dtype: no per-tensor list
            type_codes = np.full(count, codes[dtypes[0]] if dtypes else 0, dtype=np.int32)
        else:
            type_codes = np.array([codes[d] for d in dtypes], dtype=np.int32)
        arrays.append((np.array(pointers, dtype=np.int64), type_codes))
    numel = np.array(lengths, dtype=np.int64)
    out = np.zeros((count, len(COLUMNS)), dtype=np.float64)
    running = launch(kernel, runner, numel, arrays, out)

    def finish() -> GroupSums:
        for future in running:
            future.result()
        sums = out
        if split:
            sums = np.zeros((entries, len(COLUMNS)), dtype=np.float64)
            np.add.at(sums, np.array(owner, dtype=np.int64), out)
        nonfinite = nonfinite_counts(sums[:, 0], keep[0])
        quantities = group.quantities()
        columns = sums[:, [COLUMNS.index(q) for q in quantities]].T.tolist()
        return GroupSums(dict(zip(quantities, columns)), nonfinite, quantities)

    return finish


def nonfinite_counts(norm_sq: np.ndarray, weights: Sequence[Any]) -> list[int]:
    """Each entry's count of NaN/Inf weights: 0 where its sum of squares is finite (the kernel
    accumulated it, so the entry holds none), counted in the rare others. `weights` are tensors
    or refs, read for the count into memory of their own (`file_reads`): torch counts them,
    and its kernels have no SIGBUS guard."""
    import numpy as np

    from normscope.file_reads import FileReader

    counts = [0] * len(weights)
    rare = np.flatnonzero(~np.isfinite(norm_sq)).tolist()
    if not rare:
        return counts
    import torch  # here: only a weight holding NaN or Inf needs torch, to count them

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
