"""PyTorch Lightning `.ckpt` files: one, or a `ModelCheckpoint` directory of them.

A Lightning checkpoint is a `torch.save` zip holding `state_dict` (keys under the LightningModule's
attribute, e.g. `model.`), `optimizer_states` (one per optimizer; the first is used), `epoch` and
`global_step`. `last.ckpt` and `-vN` re-saves are copies of a checkpoint already in the directory
when they carry the same step, and are dropped.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from normscope.snapshot import Run

from ._assemble import build_run
from ._files import files_in, label_of
from ._ordering import PendingSnapshot
from ._torchio import is_torch_zip, load_torch_file, zip_pickle_bytes
from .torch_files import is_tensor_or_ref, pending_from_checkpoint

_MARKERS = (b"pytorch-lightning_version", b"optimizer_states")
_COPY_NAME = re.compile(r"(^last(-v\d+)?\.ckpt$)|(-v\d+\.ckpt$)")


def sniff_lightning_file(path: str) -> bool:
    """A torch zip whose pickle names Lightning's own top-level keys (read without unpickling)."""
    if not (os.path.isfile(path) and is_torch_zip(path)):
        return False
    pickled = zip_pickle_bytes(path)
    return pickled is not None and any(marker in pickled for marker in _MARKERS)


def epochs_completed(checkpoint: Mapping[str, Any], epoch: float | None) -> float | None:
    """Lightning stores the 0-based index of the epoch in progress; normscope's `epoch` counts
    epochs completed (as HF and plain torch saves do). A save at the end of an epoch (the default
    for ModelCheckpoint; the fit loop marks it `is_last_batch`) has completed `epoch + 1` epochs."""
    if epoch is None:
        return None
    loops = checkpoint.get("loops")
    fit = loops.get("fit_loop") if isinstance(loops, Mapping) else None
    batches = fit.get("epoch_loop.batch_progress") if isinstance(fit, Mapping) else None
    if isinstance(batches, Mapping) and batches.get("is_last_batch") is True:
        return float(epoch) + 1.0
    return float(epoch)


def read_lightning_checkpoint(
    path: str, label: str, warnings: list[str], *, recover_unsafe: bool = False
) -> PendingSnapshot:
    checkpoint = load_torch_file(path, recover_unsafe=recover_unsafe, notes=warnings, refs=True)
    pending = pending_from_checkpoint(checkpoint, path, label, warnings,
                                      optimizer_where="optimizer_states[0]",
                                      is_tensor=is_tensor_or_ref)
    if isinstance(checkpoint, Mapping):
        pending.embedded_epoch = epochs_completed(checkpoint, pending.embedded_epoch)
    return pending


def drop_copies(
    pending: list[PendingSnapshot],
) -> tuple[list[PendingSnapshot], list[str]]:
    """Remove `last.ckpt` / `-vN` files whose step another checkpoint already has."""
    originals = {
        (p.embedded_step, p.embedded_epoch)
        for p in pending
        if not _COPY_NAME.search(os.path.basename(p.path))
    }
    kept, notes = [], []
    for p in pending:
        key = (p.embedded_step, p.embedded_epoch)
        if (
            _COPY_NAME.search(os.path.basename(p.path))
            and key in originals
            and key[0] is not None
        ):
            notes.append(
                f"skipped {p.label}: same step ({key[0]}) as another checkpoint"
            )
        else:
            kept.append(p)
            originals.add(key)
    return kept, notes


@dataclasses.dataclass(frozen=True)
class LightningCheckpoints:
    recover_unsafe: bool = False
    name: ClassVar[str] = "lightning"

    def sniff(self, path: str) -> bool:
        if os.path.isfile(path):
            return sniff_lightning_file(path)
        return os.path.isdir(path) and any(
            sniff_lightning_file(p) for p in files_in(path)
        )

    def open(self, path: str) -> Run:
        warnings: list[str] = []
        if os.path.isfile(path):
            files, root = [path], os.path.dirname(path) or "."
        else:
            # a generator: each file sniffed and read in turn, as `TorchFiles.open` does (its zip
            # directory is still cached when the reader asks)
            files, root = (p for p in files_in(path) if sniff_lightning_file(p)), path
        pending = [
            read_lightning_checkpoint(
                p, label_of(p, root), warnings, recover_unsafe=self.recover_unsafe
            )
            for p in files
        ]
        pending, notes = drop_copies(pending)
        return build_run(path, self.name, pending, [*warnings, *notes], framework="Lightning")
