"""torch.distributed.checkpoint's `.metadata`, read by the restricted unpickler (`_unpickle`).

torch.distributed.checkpoint writes its `.metadata` with plain pickle and reads it back with plain
pickle, so a crafted `.metadata` could run any code. Here the policy resolves only the metadata
dataclasses, `pathlib` paths, `torch.Size`, dtypes and layouts; any other global, and any
persistent id, stops the load with UnsafeCheckpointError before anything is called.
"""

from __future__ import annotations

import importlib
from typing import Any

from normscope.errors import BadInputError, UnsafeCheckpointError

from ._unpickle import Policy, unpickle

_DCP_METADATA_CLASSES = {
    *(("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "TensorStorageMetadata", "BytesStorageMetadata",
        "ChunkStorageMetadata", "TensorProperties", "StorageMeta", "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"), ("pathlib", "PureWindowsPath"), ("torch", "Size"),
    ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
}  # fmt: skip


def _shown(text: object, limit: int = 80) -> str:
    """Text taken from a damaged file, for an error message: escaped to one printable line, and
    cut short (a pickle's garbage can run to kilobytes)."""
    shown = repr(str(text))[1:-1]
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _dcp_policy(where: str) -> Policy:
    """The metadata classes, imported from their modules when a pickle names them, and dtypes."""
    import torch  # lazy: only a DCP directory's metadata needs it

    def metadata_class(module: str, name: str) -> Any:
        if (module, name) in _DCP_METADATA_CLASSES:
            return getattr(importlib.import_module(module), name)
        raise UnsafeCheckpointError(f"{where} needs {_shown(f'{module}.{name}')} to load; normscope "
                                    "never runs code from a checkpoint")  # fmt: skip

    def no_persistent_ids(pid: Any) -> Any:
        raise UnsafeCheckpointError(f"{where} uses persistent ids; refusing to load it")

    dtypes = {("torch", name): value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}
    return Policy(dtypes, metadata_class, no_persistent_ids)


def load_dcp_metadata(path: str) -> Any:
    """The metadata object of a torch.distributed.checkpoint directory's `.metadata` file.

    Raises:
        UnsafeCheckpointError: it names a global outside the allow-list, or a persistent id.
        BadInputError: it cannot be read or is not a whole pickle.
    """
    try:
        with open(path, "rb") as f:
            return unpickle(f.read(), _dcp_policy(path))
    except UnsafeCheckpointError:
        raise
    except PermissionError:
        raise BadInputError(f"cannot read {path}: permission denied") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a corrupt file for the user
        raise BadInputError(
            f"{path} is not readable checkpoint metadata: {type(exc).__name__}: {_shown(exc)}"
        ) from None
