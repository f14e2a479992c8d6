"""The fused CPU kernel: all of a group's sums in one pass per tensor, float64, built on first use.

torch has no single kernel for "sum x², x·y, (y−x)², x·m, m², v in float64 from bf16 inputs": the
row-block path (`reduce._reduce_blocks`) spends ~9 passes over each block to get them, which makes
the engine compute-bound below the page-cache read rate on 2 cores. `_fused.c` reads each element
once; the engine's worker threads call it through ctypes, which releases the GIL.

The library is compiled with the system C compiler the first time it is needed (~0.4 s) into
normscope's cache directory, under a name hashed from the source, flags and compiler, so an
upgrade never loads a stale build. No compiler, a failed build, an unsupported dtype or a non-CPU
tensor: the caller gets None and uses the torch path, which gives the same sums to 1e-6.
`NORMSCOPE_FUSED=0` turns the kernel off.
"""

from __future__ import annotations

import bisect
import ctypes
import functools
import hashlib
import itertools
import logging
import operator
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from normscope.engine.workers import Runner

if TYPE_CHECKING:  # pragma: no cover
    from concurrent.futures import Future

    import numpy as np
    import torch

    from normscope.engine.reduce import GroupInput, GroupSums

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("_fused.c")
ABI = 1
FLAGS = ("-O3", "-fopenmp-simd", "-fno-math-errno", "-fPIC", "-shared")
# Columns of the kernel's output rows, in `_fused.c`'s order.
COLUMNS = ("norm_sq", "dot", "diff_sq", "buf_dot", "buf_norm_sq", "sq_sum")
# Longer tensors are cut into pieces so both workers get work from a single large matrix.
PIECE_ELEMENTS = 1 << 22


def _cache_dir() -> Path:
    root = os.environ.get("NORMSCOPE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "normscope"
    )
    return Path(root)


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _identity(compiler: str) -> str:
    """Which compiler this is, for the build's name: its resolved path, size and mtime (an
    upgrade changes them). Asking `cc --version` cost a fork of this process, ~15 ms of every
    run's start; a wrapper such as ccache hides its compiler's upgrades either way, which only
    ever keeps a build of the same source and flags."""
    path = shutil.which(compiler) or compiler
    try:
        st = os.stat(path)
    except OSError:
        return path
    return f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}"


def _build(compiler: str, target: Path) -> None:
    """Compile into a temporary file beside `target`, then rename: concurrent first uses (Dask
    workers, parallel tests) never load a half-written library."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", tmp],
            check=True,
            capture_output=True,
            timeout=120,
        )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class VanishedPage(Exception):
    """The kernel read a page of a mapped file that is no longer there: the file was cut short
    while it was mapped (the caller names it, see `file_stamps`)."""


class FusedKernel:
    """The loaded library; `reduce` runs one call over arrays describing many tensors."""

    def __init__(self, library: ctypes.CDLL) -> None:
        # guarded where the library can be (see `_fused.c`): a vanished page of a mapped file
        # raises VanishedPage instead of ending the process with SIGBUS
        try:
            guarded = library.normscope_reduce_guarded
            guarded_ok = library.normscope_guard_install() == 0
        except AttributeError:
            guarded_ok = False
        self._guarded = guarded_ok
        self._reduce = guarded if guarded_ok else library.normscope_reduce
        self._reduce.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 10
        self._reduce.restype = ctypes.c_int if guarded_ok else None

    def reduce(self, count: int, numel: int, streams: Sequence[tuple[int, int] | None],
               out: int) -> None:
        """`numel`, `out` and each stream's (pointers, dtype codes) are addresses of arrays."""
        args: list[int | None] = []
        for stream in streams:
            args.extend(stream if stream is not None else (None, None))
        if self._reduce(count, numel, *args, out) and self._guarded:
            raise VanishedPage("a page of a mapped file vanished while the kernel read it")


@functools.lru_cache(maxsize=1)
def _load(disabled: bool) -> FusedKernel | None:
    if disabled or not sys.platform.startswith(("linux", "darwin")):
        return None
    compiler = _compiler()
    if compiler is None:
        log.debug("no C compiler found; using the torch kernels")
        return None
    try:
        digest = hashlib.sha256(
            b"\0".join(
                [SOURCE.read_bytes(), " ".join(FLAGS).encode(), _identity(compiler).encode(),
                 os.uname().machine.encode()]
            )
        ).hexdigest()[:16]
        target = _cache_dir() / f"fused-{digest}.so"
        if not target.exists():
            try:
                _build(compiler, target)
            except OSError:  # cache directory not writable: build into a private temp dir
                target = Path(tempfile.mkdtemp(prefix="normscope-")) / target.name
                _build(compiler, target)
        library = ctypes.CDLL(str(target))
        if library.normscope_fused_abi() != ABI:
            return None
        return FusedKernel(library)
    except (OSError, subprocess.SubprocessError, AttributeError) as exc:
        log.debug("fused kernel unavailable (%s); using the torch kernels", exc)
        return None


def fused_kernel() -> FusedKernel | None:
    """The kernel, built on first call; None where it cannot be (see the module docstring)."""
    return _load(os.environ.get("NORMSCOPE_FUSED", "1").strip().lower() in ("0", "false", "no"))


def dtype_codes() -> dict[torch.dtype | str, int]:
    """The kernel's dtype codes, by torch dtype (tensors) and by name (refs)."""
    import torch

    return {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3,
            "float32": 0, "float64": 1, "bfloat16": 2, "float16": 3}  # fmt: skip


_ITEMSIZE = (4, 8, 2, 2)  # by dtype code


def start_fused(group: GroupInput, runner: Runner) -> Callable[[], GroupSums] | None:
    """Start the kernel on the runner's threads and return what waits for and collects its sums
    (None where the kernel does not apply). The caller's thread is free meanwhile: the engine
    does the next item's Python-side bookkeeping while the kernel runs."""
    import numpy as np
    import torch

    from normscope.engine.reduce import GroupSums

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
        tensors = sum(map(isinstance, stream, repeat(torch.Tensor)))
        if tensors == 0:  # refs read in place (see `snapshot.TensorRef`)
            dtypes = list(map(_DTYPE, stream))
            if not set(dtypes) <= codes.keys():
                return None
            described.append((list(map(_ADDRESS, stream)), dtypes, list(map(_NUMEL_FIELD, stream))))
            keep.append(stream)
            continue
        if tensors < len(stream):  # tensors and refs in one stream: rare, so build tensors
            stream = [t if isinstance(t, torch.Tensor) else t.load() for t in stream]
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
    or refs (loaded for the count)."""
    import numpy as np
    import torch

    counts = [0] * len(weights)
    for i in np.flatnonzero(~np.isfinite(norm_sq)).tolist():
        weight = weights[i]
        if not isinstance(weight, torch.Tensor):
            weight = weight.load()
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
