"""Lazy tensor handles (`TensorRef` implementations) for each storage kind.

Every ref carries `name`, `shape`, `dtype` (torch dtype name without the `torch.` prefix), `numel`
and `nbytes` without reading any tensor data, so the engine can bucket by size. `load()` returns a
CPU tensor; `span` says where a tensor's bytes lie in its file, where the ref knows it
(`snapshot.TensorRef`). What a ref offers beyond that it has by the members of
`snapshot.RowsTensorRef` (`load_rows(start, stop)`: rows `start:stop` of the first dimension, so
the engine can chunk a tensor larger than its bucket; for safetensors only those bytes are read),
`snapshot.HeldTensorRef` (`held`) and `snapshot.AddressedTensorRef` (`address`, `numel`):

    ref                    load_rows  held       address
    TorchTensorRef         yes        a tensor   -
    MappedTensorRef        yes        None       an int
    SafetensorsTensorRef   yes        -          -
    ChunkedTensorRef       yes        -          -
"""

from __future__ import annotations

import functools
import math
import mmap
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from normscope.file_reads import FileReader
from normscope.file_stamps import FileSpan

if TYPE_CHECKING:  # pragma: no cover
    import torch

# safetensors dtype codes -> torch dtype names
SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
FLOAT_DTYPES = frozenset(
    {"float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"}
)
ITEMSIZE = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1,
}  # fmt: skip


@functools.cache  # a handful of dtypes, asked once per tensor of every checkpoint
def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


@dataclass
class TorchTensorRef:
    """A tensor from `torch.load(..., mmap=True)`: its storage is mapped, pages are read on use.

    `held` is the tensor `load()` returns (`snapshot.HeldTensorRef`: the engine takes it as it is).
    No `span`: torch mapped the file and does not say where; the engine finds the tensor's file
    and offset from the process's mappings when it needs them (`file_reads`)."""

    name: str
    held: torch.Tensor = field(repr=False)
    # Read once: the engine plans with the shapes and dtypes of tens of thousands of refs, and
    # converting a torch.Size or torch.dtype costs microseconds each time.
    shape: tuple[int, ...] = field(init=False, repr=False, compare=False)
    dtype: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.shape = tuple(self.held.shape)
        self.dtype = dtype_name(self.held.dtype)

    @property
    def numel(self) -> int:
        return self.held.numel()

    @property
    def nbytes(self) -> int:
        return self.held.numel() * self.held.element_size()

    @property
    def span(self) -> FileSpan | None:
        return None

    def load(self) -> torch.Tensor:
        return self.held

    def load_rows(self, start: int, stop: int) -> torch.Tensor:
        return self.held[start:stop]


class TensorMaker(Protocol):
    """What a `MappedTensorRef` builds its tensor with: the archive that maps its file (`path`),
    whose first byte is at `base` in the mapping."""

    path: str

    @property
    def base(self) -> int: ...

    def tensor(self, record: int, dtype: str, offset: int, shape: tuple[int, ...],
               stride: tuple[int, ...]) -> torch.Tensor: ...  # fmt: skip


class MappedTensorRef(NamedTuple):
    """A tensor of a `torch.save` zip whose bytes lie, contiguous and checked in bounds, at
    `address` in a private mapping of the file (`_fast_torch_zip`'s in-place scan).

    Nothing is built on open: the engine's CPU kernel reads the bytes at `address`
    (`snapshot.AddressedTensorRef`), and `load()` builds the same tensor `torch.load(mmap=True)`
    would.
    A NamedTuple, made from columns: a ResNet-shaped checkpoint holds thousands of them, and a
    tensor over a mapped storage costs about ten times as much to build.
    `archive` keeps the mapping alive as long as a ref (or a tensor it built) is.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    numel: int
    address: int
    archive: TensorMaker
    record: int  # the storage record `data/<record>`
    offset: int  # in elements, into that record
    stride: tuple[int, ...]

    held = None  # no tensor in hand (`snapshot.HeldTensorRef`)

    @property
    def nbytes(self) -> int:
        return self.numel * ITEMSIZE[self.dtype]

    @property
    def span(self) -> FileSpan:
        """Its bytes in the file: the mapping holds the whole file from its first byte."""
        archive = self.archive
        return FileSpan(archive.path, self.address - archive.base, self.numel * ITEMSIZE[self.dtype])

    def named(self, name: str) -> MappedTensorRef:
        return tuple.__new__(MappedTensorRef, (name, *self[1:]))

    def load(self) -> torch.Tensor:
        return self.archive.tensor(self.record, self.dtype, self.offset, self.shape, self.stride)

    def load_rows(self, start: int, stop: int) -> torch.Tensor:
        return self.load()[start:stop]


class SafetensorsHandles:
    """The files of one run's refs, each mapped once (`mapped`: tensors are views) and, for the
    tensors no view can serve, opened once with `safe_open` (`get`); the most recently used kept.

    Reopening per tensor would cost O(tensors in the file) each time (a `safe_open` parses the
    whole JSON header, which grows with the file). The engine reads one bucket of parameters from every snapshot in turn, so the pool
    must hold a file per snapshot (times the shards a bucket spans), or each bucket reopens every file:
    `keep` is sized for runs of a hundred or so sharded checkpoints (an open handle is a file
    descriptor and a mapping, no memory of its own). Thread-safe: the engine reads from a
    prefetch thread.
    """

    def __init__(self, keep: int = 256) -> None:
        self.keep = keep
        self._open: OrderedDict[str, Any] = OrderedDict()
        self._mapped: OrderedDict[str, torch.Tensor | None] = OrderedDict()
        self._lock = threading.Lock()

    def mapped(self, path: str) -> torch.Tensor | None:
        """The whole file as a uint8 tensor over a private (copy-on-write) mapping, or None where
        it cannot be mapped. Views of it are the tensors, with no copy: `get_tensor` costs a
        storage per call and, on a run of large tensors, more than paging the data in
        (docs/engine.md). MAP_PRIVATE: nothing done to a view can reach the user's file."""
        import torch  # lazy: runs read in place need no torch, and importing it is slow

        with self._lock:
            if path in self._mapped:
                self._mapped.move_to_end(path)
                return self._mapped[path]
            try:
                with open(path, "rb") as f:
                    mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
                whole: torch.Tensor | None = torch.frombuffer(mapping, dtype=torch.uint8)
            except (OSError, ValueError):  # empty or unreadable file: safe_open says what is wrong
                whole = None
            self._mapped[path] = whole
            while len(self._mapped) > self.keep:
                self._mapped.popitem(last=False)
            return whole

    def get(self, path: str) -> Any:
        from safetensors import safe_open  # lazy: only a tensor no view can serve needs it

        with self._lock:
            handle = self._open.pop(path, None)
            if handle is None:
                handle = safe_open(path, framework="pt", device="cpu")
            self._open[path] = handle
            while len(self._open) > self.keep:
                self._open.popitem(last=False)
            return handle


class SizedByHeader:
    """`numel` and `nbytes` from the header's shape and dtype, for refs that hold no tensor yet."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        return _numel(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * ITEMSIZE.get(self.dtype, 4)


@dataclass(frozen=True)
class SafetensorsTensorRef(SizedByHeader):
    """A tensor in a safetensors file, read only when asked.

    With `offset` (where its bytes start in the file, from a header whose entry was checked
    against the file size, dtype and shape), `load` is a view of the file's shared private
    mapping, or, for data not aligned to its dtype, a copy read with read calls; without it, or
    if the file is now shorter than the header says, `safe_open` reads it.
    """

    name: str
    path: str
    key: str
    shape: tuple[int, ...]
    dtype: str
    handles: SafetensorsHandles = field(
        default_factory=SafetensorsHandles, repr=False, compare=False
    )
    offset: int | None = field(default=None, repr=False, compare=False)

    @property
    def span(self) -> FileSpan | None:
        return None if self.offset is None else FileSpan(self.path, self.offset, self.nbytes)

    def _view(self, start: int, shape: tuple[int, ...]) -> torch.Tensor | None:
        if self.offset is None:
            return None
        whole = self.handles.mapped(self.path)
        if whole is None:
            return None
        import torch  # lazy: runs read in place need no torch, and importing it is slow

        first = self.offset + start * ITEMSIZE[self.dtype]
        size = _numel(shape) * ITEMSIZE[self.dtype]
        if first + size > whole.numel():  # the file shrank since its header was read
            return None
        try:
            return whole[first : first + size].view(getattr(torch, self.dtype)).view(shape)
        except RuntimeError:  # an offset not aligned to the dtype's size: read into aligned memory
            with FileReader() as reader:
                return reader.span(FileSpan(self.path, first, size), self.dtype, shape)

    def load(self) -> torch.Tensor:
        view = self._view(0, self.shape)
        return view if view is not None else self.handles.get(self.path).get_tensor(self.key)

    def load_rows(self, start: int, stop: int) -> torch.Tensor:
        if not self.shape:
            return self.load()
        stop = min(stop, self.shape[0])
        rows = (max(0, stop - start), *self.shape[1:])
        view = self._view(start * _numel(self.shape[1:]), rows)
        if view is not None:
            return view
        return self.handles.get(self.path).get_slice(self.key)[start:stop]


@dataclass(frozen=True)
class ChunkedTensorRef(SizedByHeader):
    """A tensor stored as chunks (torch.distributed.checkpoint shards), assembled on `load()`.

    `chunks` are (offsets, sizes, reader) triples; each reader returns that chunk's tensor. The
    engine may reduce chunk by chunk instead (squared norms and dot products add over chunks).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[
        tuple[tuple[int, ...], tuple[int, ...], Callable[[], torch.Tensor]], ...
    ] = field(repr=False)

    @property
    def span(self) -> FileSpan | None:  # chunks come from their readers (DCP: read, not mapped)
        return None

    def load(self) -> torch.Tensor:
        import torch  # lazy: runs read in place need no torch, and importing it is slow

        if len(self.chunks) == 1 and tuple(self.chunks[0][1]) == self.shape:
            return self.chunks[0][2]()
        out = torch.empty(self.shape, dtype=getattr(torch, self.dtype))
        for offsets, sizes, read in self.chunks:
            region = out
            for dim, (off, size) in enumerate(zip(offsets, sizes)):
                region = region.narrow(dim, off, size)
            region.copy_(read().reshape(sizes))
        return out

    def load_rows(self, start: int, stop: int) -> torch.Tensor:
        return self.load()[start:stop]
