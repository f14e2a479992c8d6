"""Lazy tensor handles (`TensorRef` implementations) for each storage kind.

Every ref carries `name`, `shape`, `dtype` (torch dtype name without the `torch.` prefix), `numel`
and `nbytes` without reading any tensor data, so the engine can bucket by size. `load()` returns a
CPU tensor; `load_rows(start, stop)` returns rows `start:stop` of the first dimension, so the engine
can chunk a tensor larger than its bucket (for safetensors only those bytes are read).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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
_ITEMSIZE = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1,
}  # fmt: skip


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


@dataclass
class TorchTensorRef:
    """A tensor from `torch.load(..., mmap=True)`: its storage is mapped, pages are read on use."""

    name: str
    tensor: torch.Tensor = field(repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    @property
    def dtype(self) -> str:
        return dtype_name(self.tensor.dtype)

    @property
    def numel(self) -> int:
        return self.tensor.numel()

    @property
    def nbytes(self) -> int:
        return self.tensor.numel() * self.tensor.element_size()

    def load(self) -> torch.Tensor:
        return self.tensor

    def load_rows(self, start: int, stop: int) -> torch.Tensor:
        return self.tensor[start:stop]


@dataclass(frozen=True)
class SafetensorsTensorRef:
    """A tensor in a safetensors file, read with `safe_open` only when asked."""

    name: str
    path: str
    key: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        return _numel(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * _ITEMSIZE.get(self.dtype, 4)

    def load(self) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(self.path, framework="pt", device="cpu") as f:
            return f.get_tensor(self.key)

    def load_rows(self, start: int, stop: int) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(self.path, framework="pt", device="cpu") as f:
            if not self.shape:
                return f.get_tensor(self.key)
            return f.get_slice(self.key)[start:stop]


@dataclass(frozen=True)
class ChunkedTensorRef:
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
    def numel(self) -> int:
        return _numel(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * _ITEMSIZE.get(self.dtype, 4)

    def load(self) -> torch.Tensor:
        import torch

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
