"""Checkpoint files that are copies of another one: reported, never ordered as snapshots.

Savers keep the latest or best checkpoint under a second name as well: timm's `last.pth.tar` and
`model_best.pth.tar` (hard links, or copies), torchvision's `checkpoint.pth` (the same dict saved
again), a user's `final.pt`. A copy is the same file (same inode), or a file with the same content:
the same step and epoch, the same tensor names and shapes, the same pickled structure (a torch.save
archive's `data.pkl`, which holds every non-tensor value) or first megabyte, and the same bytes in
its smallest tensor. Of each set of copies the numbered name is kept; a file whose name carries
other numbers than the kept one's (`step_200`, `step_300`) is a snapshot of its own, even when
training left its weights unchanged.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from typing import Any

from normscope.file_reads import FileReader

from ._ordering import PendingSnapshot, natural_key, numbers_of
from ._refs import MappedTensorRef, SafetensorsTensorRef
from ._torchio import ZIP_MAGIC, read_head, zip_pickle_bytes

_HEAD = 1 << 20


def _numbers(p: PendingSnapshot) -> tuple[Any, ...]:
    return (p.embedded_step, p.embedded_epoch, p.trainer_step)


def _shapes(p: PendingSnapshot) -> frozenset[tuple[str, tuple[int, ...]]]:
    return frozenset((name, tuple(ref.shape)) for name, ref in p.tensors.items())


def _content(p: PendingSnapshot) -> tuple[Any, ...]:
    if read_head(p.path, 4) == ZIP_MAGIC and (pickled := zip_pickle_bytes(p.path)) is not None:
        structure = hashlib.sha256(pickled).hexdigest()  # archive names differ, data.pkl does not
    else:
        structure = (os.path.getsize(p.path), hashlib.sha256(read_head(p.path, _HEAD)).hexdigest())
    return (structure, hashlib.sha256(_tensor_bytes(p)).hexdigest())


def _tensor_bytes(p: PendingSnapshot) -> bytes:
    """The bytes of the snapshot's smallest tensor, read where they lie when the ref says where
    (a mapped torch.save record, a safetensors entry): no tensor built, no torch imported."""
    name = min(p.tensors, key=lambda n: (math.prod(p.tensors[n].shape), n))
    ref = p.tensors[name]
    if type(ref) is MappedTensorRef:  # read, not touched in the mapping: the file may be rewritten
        with FileReader() as reader:
            return reader.bytes_at(*ref.span).tobytes()
    if type(ref) is SafetensorsTensorRef and ref.offset is not None:
        with open(ref.path, "rb") as f:  # the header's entry was checked against the file size
            f.seek(ref.offset)
            data = f.read(ref.nbytes)
        if len(data) == ref.nbytes:
            return data
    import torch  # lazy: only a ref that must build its tensor needs torch

    # read, not mapped: a `last.ckpt` is the file a training job rewrites (`file_reads`)
    with FileReader() as reader:
        tensor = reader.ref(ref)
    return tensor.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def _keep_first(p: PendingSnapshot) -> tuple[Any, ...]:
    """Numbered names before plain ones (`checkpoint-9` before `last`), then name order."""
    key = natural_key(os.path.basename(p.label))
    return (key is None, key or (), p.label)


def _may_copy(p: PendingSnapshot, original: PendingSnapshot) -> bool:
    """A name without numbers (`last`, `model_best`), or one with the original's step and epoch."""
    if natural_key(os.path.basename(p.label)) is None:
        return True
    numbers = numbers_of(p)
    return numbers != (None, None) and numbers == numbers_of(original)


def drop_copies(pending: Sequence[PendingSnapshot]) -> tuple[list[PendingSnapshot], list[str]]:
    """The snapshots without copies of one another, and a note for each copy left out."""
    # by step and epoch first: a run's snapshots differ there, and only files that share them
    # have their tensor names and shapes compared (tens of thousands per file in a large model)
    by_numbers: dict[tuple[Any, ...], list[PendingSnapshot]] = {}
    for p in pending:
        if os.path.isfile(p.path):
            by_numbers.setdefault(_numbers(p), []).append(p)
    by_bucket: dict[tuple[Any, ...], list[PendingSnapshot]] = {}
    for numbers, same in by_numbers.items():
        for p in same:
            key = (*numbers, _shapes(p)) if len(same) > 1 else numbers
            by_bucket.setdefault(key, []).append(p)
    dropped: dict[int, str] = {}
    for group in by_bucket.values():
        if len(group) < 2:
            continue
        originals: dict[Any, PendingSnapshot] = {}
        for p in sorted(group, key=_keep_first):
            st = os.stat(p.path)
            identities = [("inode", st.st_dev, st.st_ino)]
            try:
                identities.append(("content", *_content(p)))
            except Exception:  # noqa: BLE001 - unreadable now: the engine says so when it reads it
                pass
            first = next((originals[i] for i in identities if i in originals), None)
            # a name with numbers of its own is a snapshot of its own, even of unchanged weights
            if first is not None and _may_copy(p, first):
                dropped[id(p)] = first.label
                continue
            for i in identities:
                originals[i] = p
    notes = [
        f"skipped {p.label}: a copy of {dropped[id(p)]}" for p in pending if id(p) in dropped
    ]
    return [p for p in pending if id(p) not in dropped], notes
