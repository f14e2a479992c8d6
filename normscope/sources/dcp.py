"""torch.distributed.checkpoint directories (`.metadata` + `*.distcp`), read on one process.

torch's own reader unpickles `.metadata` without restriction; here it goes through an allow-list
unpickler, and each stored item is read by seeking to its recorded offset and `torch.load`-ing
those bytes with `weights_only=True`. A tensor saved by several ranks is a set of chunks; its
`ChunkedTensorRef` assembles them on `load()` and exposes `chunks` for chunk-wise reduction.
"""

from __future__ import annotations

import io
import os
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
    import torch

    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(length)
    except PermissionError:
        raise BadInputError(f"cannot read {path}: permission denied") from None
    if len(data) != length:
        raise BadInputError(
            f"{path} is truncated (item at {offset} needs {length} bytes)"
        )
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - corrupt or unsafe item: one line either way
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadInputError(
            f"{path}: cannot read item at offset {offset}: {first}"
        ) from None


def _storage_index(
    metadata: Any, directory: str
) -> dict[tuple[str, tuple[int, ...] | None], tuple[str, int, int]]:
    index: dict[tuple[str, tuple[int, ...] | None], tuple[str, int, int]] = {}
    for key, info in metadata.storage_data.items():
        if getattr(info, "transform_descriptors", None):
            raise BadInputError(
                f"{directory} uses storage transforms ({', '.join(info.transform_descriptors)}); "
                "not supported"
            )
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
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = load_dcp_metadata(os.path.join(directory, METADATA))
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
    import torch

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
