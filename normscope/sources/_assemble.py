"""From what a layout found to a `Run`: order in time, check the snapshots belong together."""

from __future__ import annotations

import itertools
from dataclasses import replace

from normscope.errors import BadInputError
from normscope.snapshot import Run, Snapshot, SnapshotStats

from ._copies import drop_copies
from ._frameworks import apply_convention
from ._ordering import PendingSnapshot, order_snapshots

# Two snapshots whose parameter names overlap less than this (Jaccard) are different models.
MIN_OVERLAP = 0.5


def _overlap(a: set[str], b: set[str]) -> float:
    return len(a & b) / max(1, len(a | b))


def _describe(snaps: list[Snapshot]) -> str:
    names = set(snaps[0].tensors)
    shown = ", ".join(s.meta.path.rsplit("/", 1)[-1] for s in snaps[:3])
    more = f" and {len(snaps) - 3} more" if len(snaps) > 3 else ""
    example = ", ".join(sorted(names)[:2])
    return f"[{shown}{more}] ({len(names)} tensors, e.g. {example})"


def check_same_model(snapshots: list[Snapshot], root: str) -> list[str]:
    """Raise if the snapshots hold unrelated models; report parameters that appear or vanish."""
    if not snapshots:
        return []
    # each group is compared through its latest member, so a model that grows step by step
    # (progressive growing, added heads) stays one group while an unrelated model starts another
    groups: list[tuple[list[set[str]], list[Snapshot]]] = []
    # a snapshot with the names of the one before (in the same order: a run of one model) joins
    # that one's group, whose latest names are those: no sets built for it
    previous_names: list[str] | None = None
    previous_group: list[Snapshot] | None = None
    for snap in snapshots:
        ordered = list(snap.tensors)
        if ordered == previous_names and previous_group is not None:
            previous_group.append(snap)
            continue
        previous_names = ordered
        names = set(ordered)
        for latest, members in groups:
            if _overlap(names, latest[0]) >= MIN_OVERLAP:
                latest[0] = names
                members.append(snap)
                previous_group = members
                break
        else:
            groups.append(([names], [snap]))
            previous_group = groups[-1][1]
    if len(groups) > 1:
        a, b = groups[0][1], groups[1][1]
        raise BadInputError(
            f"{root} mixes unrelated models: {_describe(a)} vs {_describe(b)} "
            "share few parameter names; point normscope at one run"
        )
    notes: list[str] = []
    for prev, snap in itertools.pairwise(snapshots):
        if prev.tensors.keys() == snap.tensors.keys():
            continue
        before, after = set(prev.tensors), set(snap.tensors)
        where = (
            f"step {snap.meta.step}" if snap.meta.step is not None else snap.meta.path
        )
        for verb, names in (("appear", after - before), ("vanish", before - after)):
            if names:
                listed = ", ".join(sorted(names)[:5]) + (" …" if len(names) > 5 else "")
                notes.append(f"{len(names)} parameter(s) {verb} at {where}: {listed}")
    return notes


def condense(warnings: list[str], labels: list[str]) -> list[str]:
    """One line per distinct note: "label: text" repeated across snapshots becomes
    "text (label1, label2, … N snapshots)", so a long run does not print the same line N times."""
    by_text: dict[str, list[str]] = {}
    order: list[str] = []
    for line in warnings:
        label = next((lb for lb in labels if line.startswith(f"{lb}: ")), None)
        text = line[len(label) + 2 :] if label else line
        if text not in by_text:
            by_text[text] = []
            order.append(text)
        if label:
            by_text[text].append(label)
    out = []
    for text in order:
        where = by_text[text]
        if not where:
            out.append(text)
        elif len(where) == 1:
            out.append(f"{where[0]}: {text}")
        else:
            shown = ", ".join(where[:2]) + (
                f", … {len(where)} snapshots" if len(where) > 2 else ""
            )
            out.append(f"{text} ({shown})")
    return out


def build_run(
    root: str,
    layout: str,
    pending: list[PendingSnapshot],
    warnings: list[str],
    *,
    framework: str | None = None,
) -> Run:
    """The ordered run. `framework` names the saver where the layout itself tells it; otherwise
    the conventions of `_frameworks` are tried. Copies of a checkpoint are left out (`_copies`)."""
    if not pending:
        raise BadInputError(f"no checkpoints found in {root}")
    if framework is None:
        pending, framework = apply_convention(pending)
    pending, copy_notes = drop_copies(pending)
    warnings = [*warnings, *copy_notes]
    snapshots, ordering, order_notes = order_snapshots(pending)
    notes = check_same_model(snapshots, root)
    return Run(
        root=root,
        layout=layout,
        snapshots=snapshots,
        ordering=ordering,
        warnings=condense(
            [*warnings, *order_notes, *notes], [p.label for p in pending]
        ),
        framework=framework,
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
        stats=None if run.stats is None else [_forget_previous(s) for s in keep(list(run.stats))],
        framework=run.framework,
    )


def _forget_previous(stats: SnapshotStats) -> SnapshotStats:
    """Precomputed stats measured `dot_prev`/`diff_sq` against the snapshot before them, which
    subsampling dropped: against the kept one they are unknown."""
    params = {name: replace(ps, dot_prev=None, diff_sq=None) for name, ps in stats.params.items()}
    return replace(stats, params=params)
