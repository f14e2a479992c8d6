"""safetensors: single files, sharded models (`*.safetensors.index.json`), or directories of them.

Only the JSON header is read when opening, and the file is mapped privately (`SafetensorsMapping`):
each tensor the fused CPU kernel can read (float32/64, bf16, fp16, aligned to its dtype, more than
one element) becomes a `SafetensorsMappedRef` (a `MappedTensorRef`) at the address of its bytes,
read in place as a `torch.save` zip's tensors are, with no torch imported. Any other tensor, or a
file that cannot be mapped, is a `SafetensorsTensorRef`: a view of the file's shared private mapping
(`_refs.SafetensorsHandles`), or what `safe_open` reads where no view can be made.
A step or epoch in the header's `__metadata__` counts as embedded ordering evidence.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from normscope.errors import BadInputError
from normscope.file_stamps import stamp_path
from normscope.snapshot import Run

from normscope import _json
from ._assemble import build_run
from ._files import files_in, inside, label_of
from ._keys import clean_names
from ._ordering import PendingSnapshot
from ._refs import (
    FLOAT_DTYPES,
    ITEMSIZE,
    SAFETENSORS_DTYPES,
    MappedTensorRef,
    SafetensorsHandles,
    SafetensorsTensorRef,
)
from ._torchio import read_head

if TYPE_CHECKING:  # pragma: no cover
    import torch

INDEX_SUFFIX = ".safetensors.index.json"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors itself refuses larger headers


def sniff_safetensors_file(path: str) -> bool:
    """8-byte little-endian header length, then a JSON object that fits in the file."""
    if not os.path.isfile(path):
        return False
    head = read_head(path, 9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= min(MAX_HEADER_BYTES, os.path.getsize(path) - 8)


def is_index(path: str) -> bool:
    return path.endswith(INDEX_SUFFIX) and os.path.isfile(path)


def read_header(path: str) -> tuple[dict[str, Any], int]:
    """The parsed header and where the data region starts (8 + the header's length); a one-line
    BadInputError if it is not a valid safetensors header."""
    try:
        size = os.path.getsize(path)
        f = open(path, "rb")  # noqa: SIM115 - closed by the `with` below
    except PermissionError:
        raise BadInputError(f"cannot read {path}: permission denied") from None
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    with f:
        raw = f.read(8)
        if len(raw) < 8:
            raise BadInputError(
                f"{path} is not a safetensors file (shorter than its header)"
            )
        (n,) = struct.unpack("<Q", raw)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise BadInputError(
                f"{path} has a corrupt safetensors header (length {n} > file size)"
            )
        try:
            header = json.loads(f.read(n))
        # ValueError: also an integer of too many digits; RecursionError: nesting too deep
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise BadInputError(
                f"{path} has a corrupt safetensors header: {_first_line(exc)}"
            ) from None
    if not isinstance(header, dict):
        raise BadInputError(
            f"{path} has a corrupt safetensors header (not a JSON object)"
        )
    data_len = size - 8 - n
    spans = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        problem = _entry_problem(info, data_len)
        if problem:
            raise BadInputError(f"{path} has a corrupt safetensors header (entry {_short(key)} {problem})")
        start, stop = info["data_offsets"]
        shape = info["shape"]
        # Exact (Python ints): a shape whose product wraps in 64 bits can name 2**64 elements
        # over a few bytes, and every size the engine plans with comes from the shape.
        need = math.prod(shape) * ITEMSIZE[SAFETENSORS_DTYPES[info["dtype"]]]
        if need != stop - start:
            raise BadInputError(
                f"{path} has a corrupt safetensors header (entry {key!r} has shape {shape}, "
                f"{need} bytes, but {stop - start} bytes of data)"
            )
        spans.append((start, stop, key))
    # As the format requires: no two tensors share bytes, so reading them all reads each byte
    # of the file at most once.
    spans.sort()
    for (_, stop, key), (start, _, other) in zip(spans, spans[1:]):
        if start < stop:
            raise BadInputError(
                f"{path} has a corrupt safetensors header (entries {key!r} and {other!r} "
                "overlap)"
            )
    return header, 8 + n


def _entry_problem(info: Any, data_len: int) -> str | None:
    """What is wrong with one tensor's entry of a header, as words after its name; None if nothing."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        return "lacks one of dtype, shape and data_offsets"
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        return f"has dtype {_short(dtype)}, which safetensors does not define"
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        return f"has shape {_short(shape)}, not a list of non-negative integers"
    if type(offsets) is not list or len(offsets) != 2 or not all(type(o) is int for o in offsets):
        return f"has data_offsets {_short(offsets)}, not two integers"
    start, stop = offsets
    if start < 0:
        return f"has data_offsets [{start}, {stop}]: a negative offset"
    if stop < start:
        return f"has data_offsets [{start}, {stop}]: its end comes before its start"
    if stop > data_len:
        return f"ends at byte {stop:,} of the data, which holds {data_len:,} bytes: truncated?"
    return None


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# what the fused kernel reads (`engine/_fused.c`); float8 goes to the torch kernels
_IN_PLACE_DTYPES = frozenset({"float64", "float32", "float16", "bfloat16"})


class SafetensorsMapping:
    """One safetensors file mapped whole, privately (ACCESS_COPY: nothing done to a tensor
    reaches the file; pages read only when touched), as torch.load(mmap=True) maps a torch file:
    the archive of its `MappedTensorRef`s, which keep it alive."""

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, "rb") as f:
            self._mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        whole = np.frombuffer(self._mapping, dtype=np.uint8)
        self._base = whole.ctypes.data
        self.size = whole.size
        self._whole: torch.Tensor | None = None  # the mapping as torch sees it, once asked

    @property
    def base(self) -> int:
        """The address of the file's first byte in the mapping."""
        return self._base

    def tensor(self, record: int, dtype: str, offset: int, shape: tuple[int, ...],
               stride: tuple[int, ...]) -> torch.Tensor:  # fmt: skip
        """The tensor whose bytes start at byte `record` of the file (checked in bounds when its
        ref was made); `offset` and `stride` as `MappedTensorRef` has them (0, C order)."""
        import torch  # lazy: only a tensor to build needs torch; the kernel reads the address

        if self._whole is None:
            self._whole = torch.frombuffer(self._mapping, dtype=torch.uint8)
        kind = getattr(torch, dtype)
        first = record + offset * kind.itemsize
        flat = self._whole[first : first + math.prod(shape) * kind.itemsize].view(kind)
        return torch.as_strided(flat, shape, stride)


class SafetensorsMappedRef(MappedTensorRef):
    """A `MappedTensorRef` into a safetensors file, which also names its file (`path`, as a
    `SafetensorsTensorRef` does: a distributed plan groups a snapshot's tensors by shard file)."""

    __slots__ = ()

    @property
    def path(self) -> str:
        return self.archive.path


def _c_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _in_place(mapping: SafetensorsMapping | None, name: str, shape: tuple[int, ...], dtype: str,
              start: int) -> SafetensorsMappedRef | None:  # fmt: skip
    """The ref the kernel reads in place at byte `start` of the mapped file, or None where it
    cannot: no mapping, a dtype it has no loop for, one element or none, bytes not aligned to
    the dtype or (the file shrank since its header was read) past the mapping's end."""
    numel = math.prod(shape)
    size = ITEMSIZE[dtype]
    if (mapping is None or dtype not in _IN_PLACE_DTYPES or numel <= 1
            or (mapping.base + start) % size or start + numel * size > mapping.size):  # fmt: skip
        return None
    return SafetensorsMappedRef(name, shape, dtype, numel, mapping.base + start, mapping, start,
                                0, _c_strides(shape))  # fmt: skip


# Files mapped for refs read in place, per run (its `SafetensorsHandles`). A mapping holds a file
# descriptor for as long as its refs live, so a run maps at most `handles.keep` files this way,
# as many as its pool keeps open; the refs of any further file go through the pool.
_MAPPED_FILES: weakref.WeakKeyDictionary[SafetensorsHandles, int] = weakref.WeakKeyDictionary()


def _mapped(path: str, handles: SafetensorsHandles) -> SafetensorsMapping | None:
    """The file mapped for its refs to be read in place; None past the run's share of mappings,
    or where it cannot be mapped (empty or unreadable: the pool's readers say what is wrong)."""
    count = _MAPPED_FILES.get(handles, 0)
    if count >= handles.keep:
        return None
    try:
        mapping = SafetensorsMapping(path)
    except (OSError, ValueError):
        return None
    _MAPPED_FILES[handles] = count + 1
    return mapping


def _metadata_number(meta: dict[str, Any], *keys: str) -> float | None:
    for key in keys:
        try:
            value = float(meta[key])
        except (KeyError, TypeError, ValueError, OverflowError):
            continue
        if math.isfinite(value):
            return value
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def safetensors_refs(
    files: dict[str, list[str]], handles: SafetensorsHandles
) -> tuple[dict[str, SafetensorsTensorRef | MappedTensorRef], dict[str, Any]]:
    """Refs for the floating tensors of `{file: [keys or all]}`, and the merged `__metadata__`.

    Args:
        files: each file and the keys wanted from it (all where the list is empty).
        handles: the run's pool of open files, for the refs not read in place.

    Returns:
        The refs by parameter name (read in place where the kernel can, see `_in_place`) and
        the files' `__metadata__` merged.

    Raises:
        BadInputError: a file that is not valid safetensors (`read_header`).
    """
    raw: dict[str, tuple[str, str, tuple[int, ...], str]] = {}
    offsets: dict[str, int | None] = {}
    mappings: dict[str, SafetensorsMapping | None] = {}
    metadata: dict[str, Any] = {}
    for path, wanted in files.items():
        header, data_start = read_header(path)
        mappings[path] = _mapped(path, handles)  # after the header was checked against its size
        found = header.get("__metadata__")
        if isinstance(found, dict):  # the format's; anything else is ignored
            metadata.update(found)
        for key, info in header.items():
            if key == "__metadata__" or (wanted and key not in wanted):
                continue
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            if dtype in FLOAT_DTYPES:
                shape = tuple(int(d) for d in info["shape"])
                raw[key] = (path, key, shape, dtype)
                start, _ = info["data_offsets"]  # its size is the shape's (`read_header`)
                offsets[key] = data_start + start
    names = clean_names(raw)
    refs: dict[str, SafetensorsTensorRef | MappedTensorRef] = {}
    for k, (path, key, shape, dtype) in raw.items():
        name = names[k]
        start = offsets[k]
        ref = None if start is None else _in_place(mappings[path], name, shape, dtype, start)
        refs[name] = ref or SafetensorsTensorRef(name, path, key, shape, dtype, handles=handles,
                                                 offset=start)  # fmt: skip
    return refs, metadata


def read_index(index_path: str) -> dict[str, list[str]]:
    """`{shard file: [tensor keys]}` from a sharded model's index."""
    try:
        with open(index_path, encoding="utf-8") as f:
            weight_map = _json.loads(f.read())["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("its weight_map is not a map of tensor names to shard files")
    except PermissionError:
        raise BadInputError(f"cannot read {index_path}: permission denied") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInputError(
            f"{index_path} is not a valid safetensors index: {exc}"
        ) from None
    base = os.path.dirname(index_path)
    by_name: dict[str, list[str]] = {}
    for key, shard in weight_map.items():
        by_name.setdefault(shard, []).append(key)
    # checked once per shard file, not per tensor: `inside` resolves symlinks (lstat per part)
    shards = {inside(base, shard, index_path): keys for shard, keys in by_name.items()}
    for shard in shards:
        if not os.path.isfile(shard):
            raise BadInputError(
                f"{index_path} names a missing shard: {os.path.basename(shard)}"
            )
    return shards


def read_safetensors_snapshot(
    path: str,
    label: str,
    files: dict[str, list[str]],
    handles: SafetensorsHandles | None = None,
) -> PendingSnapshot:
    """One snapshot from `{file: [keys, or [] for all]}`; `handles` is shared across the run."""
    before = tuple(s for f in files for s in stamp_path(f))  # before any of them is mapped
    tensors, metadata = safetensors_refs(files, handles or SafetensorsHandles())
    if not tensors:
        raise BadInputError(f"{path} holds no floating-point tensors")
    step = _metadata_number(metadata, "global_step", "step")
    epoch = _metadata_number(metadata, "epoch")
    return PendingSnapshot(
        path=path,
        label=label,
        tensors=tensors,
        embedded_step=None if step is None else int(step),
        embedded_epoch=epoch,
        extra={"shards": len(files)} if len(files) > 1 else {},
        files=before,
    )


def snapshots_in(
    path: str, root: str, handles: SafetensorsHandles
) -> list[PendingSnapshot]:
    """One snapshot per index (its shards grouped) and per safetensors file not in an index."""
    if os.path.isfile(path):
        files = read_index(path) if is_index(path) else {path: []}
        return [read_safetensors_snapshot(path, label_of(path, root), files, handles)]
    listed = files_in(path)
    pending: list[PendingSnapshot] = []
    sharded: set[str] = set()
    for index in (p for p in listed if is_index(p)):
        shards = read_index(index)
        sharded.update(shards)
        pending.append(
            read_safetensors_snapshot(index, label_of(index, root), shards, handles)
        )
    for file in listed:
        if file not in sharded and not is_index(file) and sniff_safetensors_file(file):
            pending.append(
                read_safetensors_snapshot(
                    file, label_of(file, root), {file: []}, handles
                )
            )
    return pending


class SafetensorsFiles:
    """A safetensors file or index, or a directory of them."""

    name = "safetensors"

    def sniff(self, path: str) -> bool:
        if os.path.isfile(path):
            return is_index(path) or sniff_safetensors_file(path)
        return os.path.isdir(path) and any(
            is_index(p) or sniff_safetensors_file(p) for p in files_in(path)
        )

    def open(self, path: str) -> Run:
        root = path if os.path.isdir(path) else (os.path.dirname(path) or ".")
        pending = snapshots_in(path, root, SafetensorsHandles())
        warnings = []
        if os.path.isdir(path):
            used = {os.path.basename(p.path) for p in pending}
            skipped = [
                os.path.basename(f)
                for f in files_in(path)
                if os.path.basename(f) not in used
                and not sniff_safetensors_file(f)
                and not is_index(f)
            ]
            if skipped:
                warnings.append(
                    f"ignored {len(skipped)} file(s) that are not safetensors: {', '.join(skipped[:5])}"
                )
        return build_run(path, self.name, pending, warnings)
