"""What the training frameworks' own checkpoint savers write, and how to read their numbers.

Each convention says how its checkpoints are told apart (the keys of the dict it saves, and the
file names), what the number in a file name counts, and whether its stored `epoch` is the 0-based
index of the epoch just finished (normscope's `epoch` counts epochs completed, so those add one).
Files that are copies of another checkpoint (`last.pth.tar`, `model_best.pth.tar`,
`checkpoint.pth`) are found by content (`_copies`), not by these names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ._ordering import PendingSnapshot


@dataclass(frozen=True)
class Convention:
    name: str  # what `analyze` reports
    keys: frozenset[str]  # top-level keys every checkpoint of this framework holds
    # a file name that numbers finished epochs by their 0-based index; group 1 is the number
    numbered_epochs: re.Pattern[str] | None = None
    # a file name whose group 1 counts epochs completed: saved mid-epoch (the epoch in
    # progress), or a milestone (timm's `milestone-<completed epochs>`)
    mid_epoch: re.Pattern[str] | None = None
    epoch_is_index: bool = False  # the stored `epoch` is the finished epoch's 0-based index
    names_required: bool = False  # the keys alone are too common to tell the framework


CONVENTIONS: tuple[Convention, ...] = (
    # timm's CheckpointSaver: `checkpoint-<epoch>.pth.tar`, `recovery-<epoch>-<batch>.pth.tar`;
    # `last.pth.tar`, `model_best.pth.tar` and `milestone-<n>.pth.tar` are hard links or copies
    Convention(
        "timm",
        frozenset({"arch", "state_dict", "epoch", "version"}),
        numbered_epochs=re.compile(r"(?:^|/)checkpoint-(\d+)\.pth\.tar$"),
        mid_epoch=re.compile(r"(?:^|/)(?:recovery-(\d+)-\d+|milestone-(\d+))\.pth\.tar$"),
        epoch_is_index=True,
    ),
    # torchvision's classification/detection/segmentation reference recipes:
    # `model_<epoch>.pth` each epoch and `checkpoint.pth` (the same dict, saved again)
    Convention(
        "torchvision recipe",
        frozenset({"model", "optimizer", "lr_scheduler", "epoch", "args"}),
        numbered_epochs=re.compile(r"(?:^|/)model_(\d+)\.pth$"),
        epoch_is_index=True,
        names_required=True,
    ),
    # nanoGPT and loops written after it: `iter_num` optimizer steps done when saved
    Convention("nanoGPT-style", frozenset({"model", "optimizer", "model_args", "iter_num"})),
)

_COPY_NAMES = re.compile(r"(?:^|/)(?:last|model_best|checkpoint)\.pth(?:\.tar)?$")


def _names_fit(convention: Convention, labels: Sequence[str]) -> bool:
    patterns = [p for p in (convention.numbered_epochs, convention.mid_epoch) if p is not None]
    return any(p.search(label) for p in patterns for label in labels) and all(
        _COPY_NAMES.search(label) or any(p.search(label) for p in patterns) for label in labels
    )


def recognise(pending: Sequence[PendingSnapshot]) -> Convention | None:
    """The convention every snapshot of the run follows, or None."""
    if not pending:
        return None
    for convention in CONVENTIONS:
        if all(convention.keys <= p.top_keys for p in pending) and (
            not convention.names_required or _names_fit(convention, [p.label for p in pending])
        ):
            return convention
    return None


def _read(convention: Convention, p: PendingSnapshot) -> PendingSnapshot:
    label = p.label.replace(os.sep, "/")
    epoch = p.embedded_epoch
    mid = convention.mid_epoch.search(label) if convention.mid_epoch else None
    if epoch is not None and convention.epoch_is_index and not (mid and mid.group(1)):
        epoch += 1
    named: tuple[int | None, float | None] = (None, None)
    numbered = convention.numbered_epochs.search(label) if convention.numbered_epochs else None
    if numbered:
        named = (None, float(int(numbered.group(1)) + 1))
    elif mid:
        named = (None, float(mid.group(1) or mid.group(2)))
    return replace(p, embedded_epoch=epoch, named=named)


def apply_convention(
    pending: list[PendingSnapshot],
) -> tuple[list[PendingSnapshot], str | None]:
    """The snapshots with their numbers read as their framework writes them, and its name."""
    convention = recognise(pending)
    if convention is None:
        return pending, None
    return [_read(convention, p) for p in pending], convention.name
