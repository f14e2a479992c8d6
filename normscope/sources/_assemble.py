"""From what a layout found to a `Run`: order in time, check the snapshots belong together."""

from __future__ import annotations

import itertools

from normscope.errors import BadInputError
from normscope.snapshot import Run, Snapshot

from ._ordering import PendingSnapshot, order_snapshots

# Two snapshots whose parameter names overlap less than this (Jaccard) are different models.
MIN_OVERLAP = 0.5


def _overlap(a: set[str], b: set[str]) -> float:
    return len(a & b) / max(1, len(a | b))


def _describe(snaps: list[Snapshot], names: set[str]) -> str:
    shown = ", ".join(s.meta.path.rsplit("/", 1)[-1] for s in snaps[:3])
    more = f" and {len(snaps) - 3} more" if len(snaps) > 3 else ""
    example = ", ".join(sorted(names)[:2])
    return f"[{shown}{more}] ({len(names)} tensors, e.g. {example})"


def check_same_model(snapshots: list[Snapshot], root: str) -> list[str]:
    """Raise if the snapshots hold unrelated models; report parameters that appear or vanish."""
    if not snapshots:
        return []
    first = set(snapshots[0].tensors)
    groups: list[tuple[set[str], list[Snapshot]]] = [(first, [])]
    for snap in snapshots:
        names = set(snap.tensors)
        for group_names, members in groups:
            if _overlap(names, group_names) >= MIN_OVERLAP:
                members.append(snap)
                break
        else:
            groups.append((names, [snap]))
    if len(groups) > 1:
        (a_names, a), (b_names, b) = groups[0], groups[1]
        raise BadInputError(
            f"{root} mixes unrelated models: {_describe(a, a_names)} vs {_describe(b, b_names)} "
            "share few parameter names; point normscope at one run"
        )
    notes: list[str] = []
    for prev, snap in itertools.pairwise(snapshots):
        before, after = set(prev.tensors), set(snap.tensors)
        where = (
            f"step {snap.meta.step}" if snap.meta.step is not None else snap.meta.path
        )
        for verb, names in (("appear", after - before), ("vanish", before - after)):
            if names:
                listed = ", ".join(sorted(names)[:5]) + (" …" if len(names) > 5 else "")
                notes.append(f"{len(names)} parameter(s) {verb} at {where}: {listed}")
    return notes


def build_run(
    root: str, layout: str, pending: list[PendingSnapshot], warnings: list[str]
) -> Run:
    if not pending:
        raise BadInputError(f"no checkpoints found in {root}")
    snapshots, ordering, order_notes = order_snapshots(pending)
    notes = check_same_model(snapshots, root)
    return Run(
        root=root,
        layout=layout,
        snapshots=snapshots,
        ordering=ordering,
        warnings=[*warnings, *order_notes, *notes],
    )


def subsample(run: Run, every: int) -> Run:
    """Every `every`-th snapshot, always keeping the last one."""
    if every < 1:
        raise BadInputError(f"--every must be at least 1, got {every}")
    if every == 1:
        return run

    def keep(items):  # type: ignore[no-untyped-def]
        last = len(items) - 1
        return [x for i, x in enumerate(items) if i % every == 0 or i == last]

    return Run(
        root=run.root,
        layout=run.layout,
        snapshots=keep(list(run.snapshots)),
        ordering=run.ordering,
        warnings=run.warnings,
        stats=None if run.stats is None else keep(list(run.stats)),
    )
