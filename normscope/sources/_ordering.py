"""Putting snapshots in time order, with the best evidence every snapshot has.

Evidence, strongest first: step/epoch stored in the checkpoint; a trainer's state file; numbers in
the file name (`checkpoint-N`, `epoch=E-step=S`, `step_N`, `global_stepN`, `epoch_N`, then a
natural sort); the file's modification time. One level is used for the whole run — the strongest
that every snapshot has — so a run is never ordered by a mix of clocks.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from normscope.file_stamps import FileStamp, merge_stamps, stamp_path
from normscope.snapshot import (
    ORDER_EMBEDDED,
    ORDER_FILENAME,
    ORDER_MTIME,
    ORDER_TRAINER_STATE,
    ParamGroup,
    Snapshot,
    SnapshotMeta,
)


@dataclass
class PendingSnapshot:
    """What a layout found in one checkpoint, before the run is ordered."""

    path: str
    label: str  # the name the user knows it by (relative to the run root)
    tensors: Mapping[str, Any]
    optimizer_state: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    optimizer: str | None = None
    param_groups: tuple[ParamGroup, ...] = ()
    hyperparams_source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    embedded_step: int | None = None
    embedded_epoch: float | None = None
    trainer_step: int | None = None
    trainer_epoch: float | None = None
    # stamps of the files read, taken before they were mapped; `_finish` adds those of `path`
    files: tuple[FileStamp, ...] = ()
    # (step, epoch) the file name gives, where a framework's convention reads it (`_frameworks`);
    # None: the generic patterns of `name_numbers`
    named: tuple[int | None, float | None] | None = None
    top_keys: frozenset[str] = frozenset()  # the checkpoint dict's own keys, for recognisers


_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"epoch=(\d+)-step=(\d+)"), "epoch-step"),
    (re.compile(r"checkpoint-(\d+)"), "step"),
    (re.compile(r"global_step[-_]?(\d+)"), "step"),
    (
        re.compile(r"(?:^|[^a-z])(?:step|iter|iteration)[-_=]?(\d+)", re.IGNORECASE),
        "step",
    ),
    (re.compile(r"(?:^|[^a-z])epoch[-_=]?(\d+)", re.IGNORECASE), "epoch"),
)
_DIGITS = re.compile(r"(\d+)")


def name_numbers(label: str) -> tuple[int | None, float | None]:
    """(step, epoch) read from a file name, either possibly None."""
    for pattern, kind in _PATTERNS:
        m = pattern.search(label)
        if m:
            if kind == "epoch-step":
                return int(m.group(2)), int(m.group(1))
            if kind == "step":
                return int(m.group(1)), None
            return None, int(m.group(1))
    return None, None


def numbers_of(p: PendingSnapshot) -> tuple[int | None, float | None]:
    return name_numbers(p.label) if p.named is None else p.named


def natural_key(label: str) -> tuple[Any, ...] | None:
    """Sort key treating digit runs as numbers; None when the name has no digits at all."""
    parts = _DIGITS.split(label)
    if len(parts) == 1:
        return None
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def _keys_at(level: str, pending: list[PendingSnapshot]) -> list[Any] | None:
    if level == ORDER_EMBEDDED:
        if all(p.embedded_step is not None for p in pending):
            return [(p.embedded_step, p.embedded_epoch or 0.0) for p in pending]
        if all(p.embedded_epoch is not None for p in pending):
            return [(p.embedded_epoch,) for p in pending]
        return None
    if level == ORDER_TRAINER_STATE:
        if all(p.trainer_step is not None for p in pending):
            return [(p.trainer_step,) for p in pending]
        return None
    if level == ORDER_FILENAME:
        parsed = [numbers_of(p) for p in pending]
        if all(s is not None for s, _ in parsed):
            return [(s, e or 0) for s, e in parsed]
        if all(e is not None for _, e in parsed):
            return [(e,) for _, e in parsed]
        natural = [natural_key(p.label) for p in pending]
        if all(k is not None for k in natural):
            return natural
        return None
    return [(os.stat(p.path).st_mtime_ns,) for p in pending]


def _duplicates(keys: list[Any]) -> list[Any]:
    seen: set[Any] = set()
    return [k for k in keys if k in seen or seen.add(k)]  # type: ignore[func-returns-value]


def order_snapshots(
    pending: list[PendingSnapshot],
) -> tuple[list[Snapshot], str, list[str]]:
    """Snapshots in time order, the ORDER_* level used, and notes on anything ambiguous.

    The strongest level every snapshot has is used, unless its positions repeat (a script that
    saves `step=0` every time) and a weaker level other than mtime tells the snapshots apart.
    """
    warnings: list[str] = []
    available = [
        (level, keys)
        for level in (ORDER_EMBEDDED, ORDER_TRAINER_STATE, ORDER_FILENAME, ORDER_MTIME)
        if (keys := _keys_at(level, pending)) is not None
    ]
    level, keys = available[0]
    if _duplicates(keys):
        better = next(
            (
                (lv, ks)
                for lv, ks in available[1:]
                if lv != ORDER_MTIME and not _duplicates(ks)
            ),
            None,
        )
        if better is not None:
            warnings.append(
                f"{level} positions repeat ({', '.join(sorted({_show_key(k) for k in _duplicates(keys)}))}); "
                f"ordered by {better[0]} instead"
            )
            level, keys = better
    # ties keep a stable, name-based order so the same directory always reads the same way
    ranked = sorted(
        zip(keys, pending),
        key=lambda kp: (kp[0], natural_key(kp[1].label) or (), kp[1].label),
    )
    seen: dict[Any, list[str]] = {}
    for key, p in ranked:
        seen.setdefault(key, []).append(p.label)
    for key, labels in seen.items():
        if len(labels) > 1:
            warnings.append(
                f"{len(labels)} snapshots share the same {level} position {_show_key(key)}: "
                f"{', '.join(labels)} (kept in name order)"
            )
    if level == ORDER_MTIME and len(pending) > 1:
        warnings.append(
            "no step, epoch or number in the names: ordered by file modification time"
        )
    warnings[:0] = _partly_recorded(pending, level)
    return [_finish(p, level) for _, p in ranked], level, warnings


# The evidence a level needs from every snapshot, in words, and whether one snapshot has it.
_RECORDED = {
    ORDER_EMBEDDED: ("a step or epoch stored inside them",
                     lambda p: p.embedded_step is not None or p.embedded_epoch is not None),
    ORDER_TRAINER_STATE: ("a global_step in their trainer_state.json", lambda p: p.trainer_step is not None),
}


def _partly_recorded(pending: list[PendingSnapshot], used: str) -> list[str]:
    """A note for each level stronger than the one used that some snapshots record and others do
    not: the run was ordered (and its steps or epochs taken) from weaker evidence than most of
    its files hold, which the user should hear about."""
    notes = []
    for level, (what, has) in _RECORDED.items():
        if level == used:
            break
        lacking = [p.label for p in pending if not has(p)]
        if 0 < len(lacking) < len(pending):
            shown = ", ".join(lacking[:3]) + (f" and {len(lacking) - 3} more" if len(lacking) > 3 else "")
            notes.append(f"{len(pending) - len(lacking)} of {len(pending)} snapshots have {what}; "
                         f"{shown} {'has' if len(lacking) == 1 else 'have'} none: ordered by {used} instead")
    return notes


def _show_key(key: Any) -> str:
    return "/".join(str(k) for k in key) if isinstance(key, tuple) else str(key)


def _finish(p: PendingSnapshot, level: str) -> Snapshot:
    """The snapshot with step/epoch taken from the evidence that ordered the run, then the rest."""
    name_step, name_epoch = numbers_of(p)
    sources = {
        ORDER_EMBEDDED: (p.embedded_step, p.embedded_epoch),
        ORDER_TRAINER_STATE: (p.trainer_step, p.trainer_epoch),
        ORDER_FILENAME: (name_step, name_epoch),
    }
    preference = [level, *(lv for lv in sources if lv != level)]
    steps = [sources[lv][0] for lv in preference if lv in sources]
    epochs = [sources[lv][1] for lv in preference if lv in sources]
    step = next((s for s in steps if s is not None), None)
    epoch = next((e for e in epochs if e is not None), None)
    meta = SnapshotMeta(
        path=p.path,
        step=None if step is None else int(step),
        epoch=None if epoch is None else float(epoch),
        order_source=level,
        optimizer=p.optimizer,
        param_groups=p.param_groups,
        hyperparams_source=p.hyperparams_source,
        extra=dict(p.extra),
    )
    return Snapshot(meta=meta, tensors=p.tensors, optimizer_state=p.optimizer_state,
                    files=merge_stamps(p.files, stamp_path(p.path)))
