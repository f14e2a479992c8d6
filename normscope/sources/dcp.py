"""torch.distributed.checkpoint directories (`.metadata` + `*.distcp`), read on one process.

torch's own reader unpickles `.metadata` without restriction; here it goes through an allow-list
unpickler, and each stored item is read by seeking to its recorded offset and `torch.load`-ing
those bytes with `weights_only=True`. A tensor saved by several ranks is a set of chunks; its
`ChunkedTensorRef` assembles them on `load()` and exposes `chunks` for chunk-wise reduction.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import warnings
from functools import partial
from typing import Any

from normscope.errors import BadInputError
from normscope.snapshot import Run

from ._assemble import build_run
from ._files import files_in, inside, label_of, subdirs_in
from ._refs import ChunkedTensorRef, dtype_name
from ._restricted_pickle import load_dcp_metadata
from .torch_files import pending_from_checkpoint

METADATA = ".metadata"


def is_dcp_dir(path: str) -> bool:
    return (
        os.path.isdir(path)
        and os.path.isfile(os.path.join(path, METADATA))
        and any(p.endswith(".distcp") for p in files_in(path))
    )


def _read_item(path: str, offset: int, length: int) -> Any:
    import torch  # lazy: torch, which reading a run whose tensors the kernel reads in place never imports

    try:
        with open(path, "rb") as f:
            # checked before seeking and allocating: the metadata's offsets can be any int
            if offset + length > os.fstat(f.fileno()).st_size:
                raise BadInputError(
                    f"{path} is truncated (item at {offset} needs {length} bytes)"
                )
            f.seek(offset)
            data = f.read(length)
    except PermissionError:
        raise BadInputError(f"cannot read {path}: permission denied") from None
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) != length:
        raise BadInputError(
            f"{path} is truncated (item at {offset} needs {length} bytes)"
        )
    try:
        # torch warns of odd pickle protocols; the refusal or the tensor is the answer, not that
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        # torch's text advises turning the weights-only reader off, which normscope never does
        raise BadInputError(
            f"{path}: cannot read item at offset {offset}: it is not a plain tensor "
            "(the weights-only reader refused it)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - corrupt or unsafe item: one line either way
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadInputError(
            f"{path}: cannot read item at offset {offset}: {first}"
        ) from None


def _is_ints(value: Any, *, length: int | None = None) -> bool:
    """A tuple (or torch.Size, or list) of non-negative ints, of `length` if given."""
    return (
        isinstance(value, (tuple, list))
        and (length is None or len(value) == length)
        and all(type(v) is int and v >= 0 for v in value)
    )


def _corrupt(directory: str, what: str) -> BadInputError:
    return BadInputError(f"{os.path.join(directory, METADATA)} is not valid checkpoint metadata: "
                         f"{what}")  # fmt: skip


def _check_metadata(metadata: Any, directory: str) -> None:
    """What `read_dcp_tree` relies on, checked before any of it is used: the allow-list unpickler
    builds only harmless objects, but of any shape (a dict or a path in place of the metadata,
    an int for a file name, a chunk past its tensor's end). Each is one line of BadInputError."""
    import torch  # lazy: torch, which reading a run whose tensors the kernel reads in place never imports
    from torch.distributed.checkpoint.metadata import (  # lazy: torch, as above
        Metadata,
        MetadataIndex,
        TensorStorageMetadata,
    )

    if type(metadata) is not Metadata:
        raise _corrupt(directory, f"a {type(metadata).__name__}, not torch's Metadata")
    # a damaged pickle can build the object without its fields
    if not isinstance(getattr(metadata, "state_dict_metadata", None), dict) or not isinstance(
        getattr(metadata, "storage_data", None), dict
    ):
        raise _corrupt(directory, "its tables are not dicts")
    for key, info in metadata.storage_data.items():
        if (
            type(key) is not MetadataIndex
            or type(key.fqn) is not str
            or not (key.offset is None or _is_ints(key.offset))
            or type(getattr(info, "relative_path", None)) is not str
            or type(getattr(info, "offset", None)) is not int
            or type(getattr(info, "length", None)) is not int
            or info.offset < 0
            or info.length < 0
        ):
            raise _corrupt(directory, f"a storage entry that torch does not write ({key!r})")
    for fqn, meta in metadata.state_dict_metadata.items():
        if type(fqn) is not str:
            raise _corrupt(directory, f"a name that is not text ({fqn!r})")
        if not isinstance(meta, TensorStorageMetadata):
            continue
        size = getattr(meta, "size", None)  # a damaged pickle can build it without its fields
        properties = getattr(meta, "properties", None)
        if (
            not _is_ints(size)
            or type(getattr(properties, "dtype", None)) is not torch.dtype
            or not isinstance(getattr(meta, "chunks", None), list)
        ):
            raise _corrupt(directory, f"{fqn} has a size or dtype torch does not write")
        _check_chunks(fqn, tuple(size), meta.chunks, directory)
    planner = getattr(metadata, "planner_data", None)
    if planner is not None:
        if not isinstance(planner, dict):
            raise _corrupt(directory, "its planner data is not a dict")
        for fqn, path in planner.items():
            if not (isinstance(path, (tuple, list)) and all(type(p) in (str, int) for p in path)):
                raise _corrupt(directory, f"the place of {fqn!r} is not a path of names")


# Past this many chunks, a tensor's chunks are checked as row slices only (pairwise boxes would
# cost chunks**2).
_PAIRWISE_CHUNKS = 256


def _check_chunks(fqn: str, size: tuple[int, ...], chunks: list[Any], directory: str) -> None:
    """The chunks lie inside the tensor and tile it: no element twice, none missing (else the
    tensor would hold uninitialised memory, or its sums count some elements twice)."""
    boxes = []
    for chunk in chunks:
        offsets, sizes = getattr(chunk, "offsets", None), getattr(chunk, "sizes", None)
        if not (_is_ints(offsets, length=len(size)) and _is_ints(sizes, length=len(size))):
            raise _corrupt(directory, f"{fqn} has a chunk that torch does not write")
        if any(o + n > d for o, n, d in zip(offsets, sizes, size)):
            raise _corrupt(directory, f"{fqn} has a chunk past the tensor's size {list(size)}")
        boxes.append((tuple(offsets), tuple(sizes)))
    if sum(math.prod(sizes) for _, sizes in boxes) != math.prod(size):
        raise _corrupt(directory, f"{fqn}'s chunks do not cover it exactly once")
    if len(boxes) <= _PAIRWISE_CHUNKS:
        for i, (a_off, a_size) in enumerate(boxes):
            for b_off, b_size in boxes[i + 1 :]:
                if all(max(a, b) < min(a + n, b + m)
                       for a, n, b, m in zip(a_off, a_size, b_off, b_size)):  # fmt: skip
                    raise _corrupt(directory, f"{fqn} has chunks that overlap")
        return
    rows = sorted(boxes)  # many chunks: FSDP-style slices of the first dimension, in order
    at = 0
    for offsets, sizes in rows:
        if offsets[0] != at or any(offsets[1:]) or tuple(sizes[1:]) != size[1:]:
            raise _corrupt(directory, f"{fqn} has more than {_PAIRWISE_CHUNKS} chunks that are "
                                      "not slices of its first dimension")  # fmt: skip
        at += sizes[0]


def _storage_index(
    metadata: Any, directory: str
) -> dict[tuple[str, tuple[int, ...] | None], tuple[str, int, int]]:
    index: dict[tuple[str, tuple[int, ...] | None], tuple[str, int, int]] = {}
    for key, info in metadata.storage_data.items():
        transforms = getattr(info, "transform_descriptors", None)
        if transforms:
            shown = ", ".join(map(str, transforms)) if isinstance(transforms, (list, tuple)) else (
                repr(transforms))
            raise BadInputError(f"{directory} uses storage transforms ({shown}); not supported")
        offsets = tuple(key.offset) if key.offset is not None else None
        index[(key.fqn, offsets)] = (
            inside(directory, info.relative_path, os.path.join(directory, METADATA)),
            info.offset,
            info.length,
        )
    return index


def _tensor_ref(fqn: str, meta: Any, index: dict, directory: str) -> Any:
    chunks = []
    for chunk in meta.chunks:
        where = index.get((fqn, tuple(chunk.offsets)))
        if where is None:
            raise BadInputError(
                f"{directory}: no stored data for {fqn} chunk at {tuple(chunk.offsets)}"
            )
        chunks.append(
            (tuple(chunk.offsets), tuple(chunk.sizes), partial(_read_item, *where))
        )
    ref = ChunkedTensorRef(
        fqn, tuple(meta.size), dtype_name(meta.properties.dtype), tuple(chunks)
    )
    return (
        ref.load() if not ref.shape else ref
    )  # 0-d tensors (Adam's step) are read now: tiny


def _insert(tree: dict, path: tuple, value: Any) -> None:
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def _normalise(node: Any) -> Any:
    """Int-keyed dicts (flattened lists) back to lists; digit-string keys (optimizer state) to ints."""
    if not isinstance(node, dict):
        return node
    node = {k: _normalise(v) for k, v in node.items()}
    if node and all(isinstance(k, int) for k in node):
        return [node[k] for k in sorted(node)]
    if node and all(isinstance(k, str) and k.isdigit() for k in node):
        return {int(k): v for k, v in node.items()}
    return node


def read_dcp_tree(directory: str) -> dict[str, Any]:
    """The saved state_dict as nested dicts: tensors as lazy refs, other values read."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata  # lazy: torch

    metadata = load_dcp_metadata(os.path.join(directory, METADATA))
    _check_metadata(metadata, directory)
    index = _storage_index(metadata, directory)
    planner = getattr(metadata, "planner_data", None) or {}
    tree: dict[str, Any] = {}
    for fqn, meta in metadata.state_dict_metadata.items():
        if isinstance(meta, TensorStorageMetadata):
            value = _tensor_ref(fqn, meta, index, directory)
        else:
            where = index.get((fqn, None))
            if where is None:
                raise BadInputError(f"{directory}: no stored data for {fqn}")
            value = _read_item(*where)
        path = planner.get(fqn)
        _insert(tree, tuple(path) if path else (fqn,), value)
    return _normalise(tree)


def _is_tensor_like(value: Any) -> bool:
    import torch  # lazy: torch, which reading a run whose tensors the kernel reads in place never imports

    return isinstance(value, (torch.Tensor, ChunkedTensorRef))


def read_dcp_snapshot(directory: str, label: str, warnings: list[str]):  # type: ignore[no-untyped-def]
    return pending_from_checkpoint(read_dcp_tree(directory), directory, label, warnings,
                                   is_tensor=_is_tensor_like)


class DistributedCheckpoints:
    """One DCP directory, or a directory of them (one per saved step)."""

    name = "dcp"

    def sniff(self, path: str) -> bool:
        return is_dcp_dir(path) or (
            os.path.isdir(path) and any(is_dcp_dir(d) for d in subdirs_in(path))
        )

    def open(self, path: str) -> Run:
        warnings: list[str] = []
        if is_dcp_dir(path):
            dirs, root = [path], os.path.dirname(os.path.abspath(path))
        else:
            dirs, root = [d for d in subdirs_in(path) if is_dcp_dir(d)], path
            incomplete = [os.path.basename(d) for d in subdirs_in(path)
                          if not is_dcp_dir(d) and any(p.endswith(".distcp") for p in files_in(d))]  # fmt: skip
            if incomplete:
                warnings.append(f"skipped {len(incomplete)} incomplete save(s) without .metadata: "
                                f"{', '.join(incomplete[:5])}")  # fmt: skip
        pending = [read_dcp_snapshot(d, label_of(d, root), warnings) for d in dirs]
        return build_run(path, self.name, pending, warnings)
