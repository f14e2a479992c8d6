"""Tensors read with read calls into memory of their own, for the kernels no SIGBUS guard covers.

A checkpoint cut short while it is mapped (`torch.save` over `last.ckpt` truncates first) leaves
pages with nothing behind them, and touching one is a SIGBUS, which Python cannot catch. The
fused CPU kernel reads mapped pages behind a guard (`fused.py`); torch's kernels, the CUDA staging
copy and the row sums have none. Wherever they reduce a bucket, the engine reads its tensors here
(`loading.load_work`): `os.preadv` at the tensor's offset in its file into a fresh buffer, viewed
as the tensor's dtype and shape. A file cut short is then a short read, and the run ends with one
line naming it (`BadInputError`, exit code 2).

Where the bytes lie: a ref's `span` (`snapshot.TensorRef`: the in-place torch zip refs, the
safetensors refs), or, for a tensor that torch mapped itself (`torch.load(mmap=True)`: the
reader's fallback, scalars and views of a torch zip), the process's own mappings
(`/proc/self/maps`, Linux): the file and offset of the mapping the tensor's memory lies in.
A tensor in memory that no file backs (a legacy torch file, DCP chunks) is used as it is.
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from normscope._torch_seen import tensor_type
from normscope.errors import BadInputError
from normscope.file_stamps import FileSpan

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

_MAPS = "/proc/self/maps"


def changed(path: str, detail: str) -> BadInputError:
    """The one-line error for a file that is not what it was when normscope opened it."""
    return BadInputError(f"{path} changed while it was read ({detail}; a job still writing it?); "
                         "run again once it is complete")  # fmt: skip


class _Mapping:
    __slots__ = ("end", "offset", "path", "start")

    def __init__(self, start: int, end: int, offset: int, path: str) -> None:
        self.start, self.end, self.offset, self.path = start, end, offset, path


def file_mappings(text: bytes) -> list[_Mapping]:
    """The file-backed mappings listed in `text` (the format of /proc/self/maps), in address
    order, neighbours that continue one mapping of a file merged."""
    found: list[_Mapping] = []
    for line in text.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 6 or not fields[5].startswith(b"/"):
            continue  # anonymous memory, the heap, the stack
        lo, _, hi = fields[0].partition(b"-")
        start, end, offset = int(lo, 16), int(hi, 16), int(fields[2], 16)
        path = os.fsdecode(fields[5])
        last = found[-1] if found else None
        if last is not None and last.end == start and last.path == path and (
            last.offset + (last.end - last.start) == offset
        ):
            last.end = end
        else:
            found.append(_Mapping(start, end, offset, path))
    return found


class FileReader:
    """Reads tensors into memory of their own. Each file is opened once per reader (a bucket
    reads thousands of tensors from a few files); `close()` (or `with`) closes them."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._mappings: list[_Mapping] | None = None
        self._starts: list[int] = []

    def __enter__(self) -> FileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def _fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError as exc:
                raise changed(path, f"cannot open it again: {exc.strerror or exc}") from None
            self._fds[path] = fd
        return fd

    def bytes_at(self, path: str, offset: int, nbytes: int) -> np.ndarray:
        """`nbytes` of `path` from `offset`, read into a fresh uint8 array; a file that ends
        sooner has changed since it was opened (its header said the bytes were there)."""
        import numpy as np  # lazy: start-up of `normscope --version`, which imports this module

        out = np.empty(nbytes, dtype=np.uint8)  # a numpy array costs a fraction of a tensor
        if nbytes == 0:
            return out
        fd = self._fd(path)
        view = memoryview(out)
        done = 0
        while done < nbytes:
            try:
                n = _pread_into(fd, view[done:], offset + done)
            except OSError as exc:
                raise changed(path, f"reading it failed: {exc.strerror or exc}") from None
            if n == 0:
                raise changed(path, f"it ends before byte {offset + nbytes}")
            done += n
        return out

    def span(self, span: FileSpan, dtype: str, shape: Sequence[int]) -> torch.Tensor:
        """The tensor of `dtype` and `shape` whose bytes `span` locates (C order)."""
        import torch  # lazy: only a tensor to build needs torch (see _torch_seen)

        kind = getattr(torch, dtype)
        expected = math.prod(shape) * kind.itemsize
        if span.nbytes != expected:
            raise BadInputError(f"{span.path}: a tensor of {span.nbytes} bytes where its shape "
                                f"{tuple(shape)} and dtype {dtype} need {expected}")  # fmt: skip
        if not expected:
            return torch.empty(tuple(shape), dtype=kind)
        raw = self.bytes_at(span.path, span.offset, span.nbytes)
        return torch.frombuffer(raw, dtype=kind).view(tuple(shape))

    def rows(self, span: FileSpan, dtype: str, shape: Sequence[int], start: int, stop: int
             ) -> torch.Tensor:  # fmt: skip
        """Rows `start:stop` (clipped to the first dimension) of the tensor `span` locates."""
        if not shape:
            return self.span(span, dtype, shape)
        stop = min(stop, shape[0])
        start = min(start, stop)
        if shape[0] == 0 or span.nbytes % shape[0]:  # nothing to read, or `span()` says why not
            return self.span(span, dtype, shape)[start:stop]
        row_bytes = span.nbytes // shape[0]
        part = FileSpan(span.path, span.offset + start * row_bytes, (stop - start) * row_bytes)
        return self.span(part, dtype, (stop - start, *shape[1:]))

    def ref(self, ref: Any) -> torch.Tensor:
        """The whole tensor of a `TensorRef`: by its span where it has one, else `tensor()` of
        what `load()` gives."""
        span = ref.span
        if span is not None:
            return self.span(span, ref.dtype, ref.shape)
        return self.tensor(ref.load())

    def tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` itself where no file backs its memory; else the same elements (shape, strides)
        read from the file into memory of their own. Where the process's mappings cannot be
        listed (no /proc), the tensor as it is."""
        import torch  # lazy: only a tensor to build needs torch (see _torch_seen)

        if tensor.device.type != "cpu" or tensor.numel() == 0:
            return tensor
        reach = sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride()))
        extent = tensor.element_size() * (1 + reach)
        raw = self._mapped_bytes(tensor.data_ptr(), extent, "a tensor")
        if raw is None:
            return tensor
        flat = torch.frombuffer(raw, dtype=tensor.dtype)
        return torch.as_strided(flat, tuple(tensor.shape), tensor.stride())

    def scalar(self, value: np.ndarray) -> Any:
        """The one element of a numpy array (the in-place reader's scalars are views of its
        file's mapping), read from the file with a read call where a file backs it."""
        import numpy as np  # lazy: start-up of `normscope --version`, which imports this module

        raw = self._mapped_bytes(value.ctypes.data, value.itemsize, "a value")
        if raw is None:
            return value.reshape(-1)[0].item()
        return np.frombuffer(raw.tobytes(), dtype=value.dtype)[0].item()

    def _mapped_bytes(self, address: int, extent: int, what: str) -> np.ndarray | None:
        """The `extent` bytes at `address`, read from the file whose mapping holds them; None
        where no file backs that memory (or the mappings cannot be listed)."""
        mappings = self._file_mappings()
        i = bisect.bisect_right(self._starts, address) - 1
        if not mappings or i < 0 or address >= mappings[i].end:
            return None  # not a file's memory
        mapping = mappings[i]
        if address + extent > mapping.end:  # past its file's mapping: not something torch made
            raise BadInputError(f"{mapping.path}: {what} that runs past the file's mapping")
        return self.bytes_at(mapping.path, mapping.offset + address - mapping.start, extent)

    def _file_mappings(self) -> list[_Mapping]:
        if self._mappings is None:
            try:
                with open(_MAPS, "rb") as f:
                    text = f.read()
            except OSError:
                text = b""
            self._mappings = file_mappings(text)
            self._starts = [m.start for m in self._mappings]
        return self._mappings


def item(tensor: torch.Tensor, reader: FileReader | None = None) -> Any:
    """`tensor.item()` of a one-element tensor (a step, an epoch), read with read calls where
    a file backs it; `reader` shares the open files and the list of mappings between calls.
    A one-element numpy array (what the in-place reader gives without torch) is read the same way."""
    if reader is None:
        with FileReader() as own:
            return item(tensor, own)
    if isinstance(tensor, tensor_type()):
        return reader.tensor(tensor).item()
    return reader.scalar(tensor)


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    if _PREADV is not None:
        return _PREADV(fd, [view], offset)
    os.lseek(fd, offset, os.SEEK_SET)  # pragma: no cover - platforms without preadv
    data = os.read(fd, len(view))  # pragma: no cover
    view[: len(data)] = data  # pragma: no cover
    return len(data)  # pragma: no cover


_PREADV = getattr(os, "preadv", None)
