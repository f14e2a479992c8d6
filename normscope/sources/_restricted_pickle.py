"""A pickle loader that can only build an explicit allow-list of classes.

torch.distributed.checkpoint writes its `.metadata` with plain pickle and reads it back with plain
pickle, so a crafted `.metadata` could run any code. This loader resolves only the metadata
dataclasses, `pathlib` paths, `torch.Size`, dtypes and layouts; any other global stops the load
with UnsafeCheckpointError before anything is called.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

from normscope.errors import BadInputError, UnsafeCheckpointError

_DCP_METADATA_CLASSES = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "MetadataIndex",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
}


def _shown(text: object, limit: int = 80) -> str:
    """Text taken from a damaged file, for an error message: escaped to one printable line, and
    cut short (a pickle's garbage can run to kilobytes)."""
    shown = repr(str(text))[1:-1]
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


class _AllowListUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, where: str) -> None:
        super().__init__(file)
        self._where = where

    def find_class(self, module: str, name: str) -> Any:
        import torch

        if (module, name) in _DCP_METADATA_CLASSES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafeCheckpointError(
            f"{self._where} needs {_shown(f'{module}.{name}')} to load; normscope never runs code "
            "from a checkpoint"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(
            f"{self._where} uses persistent ids; refusing to load it"
        )


def load_dcp_metadata(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            return _AllowListUnpickler(f, path).load()
    except UnsafeCheckpointError:
        raise
    except PermissionError:
        raise BadInputError(f"cannot read {path}: permission denied") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a corrupt file for the user
        raise BadInputError(
            f"{path} is not readable checkpoint metadata: {type(exc).__name__}: {_shown(exc)}"
        ) from None
