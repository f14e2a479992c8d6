"""The one restricted unpickler: pickle's C `Unpickler`, reaching only what a `Policy` gives it.

This is the "Restricting Globals" pattern of the `pickle` docs. A pickle can only call what
`find_class` hands it; here that is the policy's closed table of globals, and any other global
goes to the policy's `unknown` (which refuses it, or hands back an inert placeholder). Persistent
ids go to the policy's `persistent_load`. The C unpickler runs at C speed: about a tenth of the
time of torch's pure-Python `weights_only` unpickler (docs/engine.md, "Torch files").

Policies, by their users: build tensors over a torch.save archive's records, or record where
they lie without building them (`_fast_torch_zip`); the same with inert placeholders for every
other global (`_restricted_torch`, `--recover-unsafe`); torch.distributed.checkpoint's metadata
classes (`_restricted_pickle`). Nothing here imports torch.
"""

from __future__ import annotations

import enum
import io
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class Reason(enum.Enum):
    """Why the fast torch.save reader leaves a file to `torch.load` (a closed set: `-v` counts
    them, and a torch upgrade that breaks the reader shows as one of these)."""

    ARCHIVE = "a zip archive of another kind than torch.save writes"
    PROTOCOL = "a pickle protocol other than torch's 2"
    SETTINGS = "a machine or torch.load setting under which torch builds something else"
    GLOBAL = "a global outside the allow-list"
    STORAGE_ID = "a persistent id other than a storage torch.save writes"
    ARGUMENTS = "tensor or container arguments torch.save does not write"
    RECORD = "a storage record that is missing, misplaced or of another size"
    PLACE = "a tensor or storage where the in-place reader keeps none"
    LEGACY = "a legacy (non-zip) torch file"
    FAILED = "an error while reading it (a damaged pickle or record?)"


class Declined(Exception):
    """Not a file the fast reader reads the way torch.load would: torch.load decides."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason.value} ({detail})" if detail else reason.value)
        self.reason = reason


def refuse_global(module: str, name: str) -> Any:  # the default `Policy.unknown`
    raise Declined(Reason.GLOBAL, f"{module}.{name}")


def refuse_persistent_id(pid: Any) -> Any:  # the default `Policy.persistent_load`
    raise Declined(Reason.STORAGE_ID)


@dataclass(frozen=True)
class Policy:
    """What a pickle may reach: `globals` by (module, name), what any other global becomes
    (`unknown` returns a value or raises), and what persistent ids load as."""

    globals: Mapping[tuple[str, str], object]
    unknown: Callable[[str, str], Any] = refuse_global
    persistent_load: Callable[[Any], Any] = refuse_persistent_id


class RestrictedUnpickler(pickle.Unpickler):
    """The C unpickler under a `Policy`."""

    def __init__(self, data: bytes, policy: Policy) -> None:
        # BufferedReader: the C unpickler prefetches through `peek` instead of a call per opcode
        super().__init__(io.BufferedReader(io.BytesIO(data)), encoding="utf-8")
        self._globals, self._unknown = policy.globals, policy.unknown
        self.persistent_load = policy.persistent_load

    def find_class(self, module: str, name: str) -> Any:
        found = self._globals.get((module, name))
        return self._unknown(module, name) if found is None else found


def unpickle(data: bytes, policy: Policy) -> Any:
    """The object `data` pickles, under `policy`.

    Raises:
        Declined: from the policy's `unknown` or `persistent_load` (or its stubs).
        pickle.UnpicklingError, EOFError, …: bytes that are not a whole pickle.
    """
    return RestrictedUnpickler(data, policy).load()
