"""Library entry points: from a path the user gives to the trajectory table.

    path ──open_run──► Run ──(filter)──► compute_stats ──► build_trajectory ──► Trajectory

The CLI calls exactly these; anything the CLI prints can be had from Python through them.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from normscope.engine import compute_stats
from normscope.engine.rows import GRANULARITIES, GRANULARITY_ROW, GRANULARITY_TENSOR
from normscope.errors import BadInputError
from normscope.snapshot import (
    ORDER_EMBEDDED,
    ORDER_FILENAME,
    ORDER_MTIME,
    ORDER_TRAINER_STATE,
    Run,
    Snapshot,
    SnapshotStats,
)
from normscope.sources import open_run
from normscope.sources._assemble import subsample
from normscope.trajectory import Trajectory, build_trajectory

if TYPE_CHECKING:  # pragma: no cover
    import torch

DEFAULT_BUCKET_BYTES = 256 * 2**20


def name_filter(include: Sequence[str] = (), exclude: Sequence[str] = ()) -> Callable[[str], bool]:
    """A predicate over parameter names from shell-style globs (`--include`/`--exclude`).

    With includes, a name must match one of them; a name matching any exclude is dropped.
    """
    include, exclude = tuple(include), tuple(exclude)

    def keep(name: str) -> bool:
        if include and not any(fnmatch.fnmatchcase(name, pat) for pat in include):
            return False
        return not any(fnmatch.fnmatchcase(name, pat) for pat in exclude)

    return keep


def _filter_snapshot(snap: Snapshot, keep: Callable[[str], bool]) -> Snapshot:
    tensors = {k: v for k, v in snap.tensors.items() if keep(k)}
    state = {k: v for k, v in snap.optimizer_state.items() if keep(k)}
    return replace(snap, tensors=tensors, optimizer_state=state)


def _filter_stats(stats: SnapshotStats, keep: Callable[[str], bool]) -> SnapshotStats:
    return replace(
        stats,
        params={k: v for k, v in stats.params.items() if keep(k)},
        shapes={k: v for k, v in stats.shapes.items() if keep(k)},
        dtypes={k: v for k, v in stats.dtypes.items() if keep(k)},
    )


def select(run: Run, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> Run:
    """The run restricted to the parameters the filters keep; an empty result is a usage error."""
    if not include and not exclude:
        return run
    if run.stats is not None:
        if not run.stats:
            raise _nothing_matches(include, exclude)
        return replace(run, stats=select_stats(run.stats, include, exclude))
    keep = name_filter(include, exclude)
    snapshots = [_filter_snapshot(s, keep) for s in run.snapshots]
    if not any(s.tensors for s in snapshots):
        raise _nothing_matches(include, exclude)
    return replace(run, snapshots=snapshots)


def select_stats(stats: Sequence[SnapshotStats], include: Sequence[str] = (),
                 exclude: Sequence[str] = ()) -> list[SnapshotStats]:  # fmt: skip
    """A live log's stats restricted to the parameters the filters keep (as `select` does a run's);
    an empty result from stats that held some is a usage error."""
    if not include and not exclude:
        return list(stats)
    keep = name_filter(include, exclude)
    kept = [_filter_stats(s, keep) for s in stats]
    if kept and not any(s.params for s in kept):
        raise _nothing_matches(include, exclude)
    return kept


def _nothing_matches(include: Sequence[str], exclude: Sequence[str]) -> BadInputError:
    return BadInputError(f"no parameter matches the filters (include={list(include) or 'all'}, "
                         f"exclude={list(exclude) or 'none'})")


def trajectory_from_run(
    run: Run,
    *,
    device: str | torch.device = "auto",
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    progress: Callable[[int, int], None] | None = None,
    granularity: str = GRANULARITY_TENSOR,
) -> Trajectory:
    """Reduce a run's snapshots (or take a live log's stats) into the trajectory table.

    `granularity="row"` adds each tensor's per-row (per-neuron) spread, from the same pass
    (`Trajectory.rows`); a log's run, which holds no rows, stays per tensor with a warning saying so.
    A run whose `stats` came from the engine with rows (the Dask backend) keeps them."""
    check_granularity(granularity)
    warnings = list(run.warnings)
    if run.stats is not None:
        stats: Iterable[SnapshotStats] = run.stats
        if granularity == GRANULARITY_ROW and not run.snapshots and not any(s.rows for s in run.stats):
            warnings.append(no_rows_note(run.layout))
            granularity = GRANULARITY_TENSOR
    else:
        stats = compute_stats(run.snapshots, device=device, bucket_bytes=bucket_bytes, progress=progress,
                              granularity=granularity)
    return build_trajectory(
        stats, layout=run.layout, root=run.root, ordering=run.ordering, warnings=warnings,
        framework=run.framework, granularity=granularity,
    )


def check_granularity(granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise BadInputError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")


def no_rows_note(layout: str) -> str:
    return (f"--granularity row needs checkpoints: a {layout} log holds per-tensor numbers only, so "
            "the results are per tensor")


# How `number_files_as_epochs` says which order numbered the files, by the run's ordering.
_ORDER_WORDS = {
    ORDER_EMBEDDED: "by the step or epoch each checkpoint stores",
    ORDER_TRAINER_STATE: "by the trainer's state file",
    ORDER_FILENAME: "by file name, numbers in the names compared as numbers",
    ORDER_MTIME: "by file modification time (the names give no order)",
}


def number_files_as_epochs(run: Run) -> Run:
    """The run with its checkpoints numbered epoch 1..N in their time order: one file, one epoch
    (`--one-file-per-epoch`), for checkpoints that record no step or epoch. Any epoch they do record
    is replaced; a warning says which order numbered them. A live log (steps, not files) is refused."""
    if run.stats is not None or not run.snapshots:
        raise BadInputError(f"--one-file-per-epoch numbers checkpoint files, and {run.root} is a {run.layout} "
                            "log of steps; give --steps-per-epoch N instead")
    snapshots = [replace(snap, meta=replace(snap.meta, epoch=float(epoch)))
                 for epoch, snap in enumerate(run.snapshots, start=1)]
    n = len(snapshots)

    def label(snap: Snapshot) -> str:
        return os.path.relpath(snap.meta.path, run.root) if os.path.isdir(run.root) else \
            os.path.basename(snap.meta.path)

    ends = label(snapshots[0]) if n == 1 else f"{label(snapshots[0])} … {label(snapshots[-1])}"
    order = _ORDER_WORDS.get(run.ordering, f"in {run.ordering} order")
    note = (f"--one-file-per-epoch: the {n} checkpoint(s) are epochs 1–{n}, ordered {order} ({ends})")
    return replace(run, snapshots=snapshots, warnings=[*run.warnings, note])


def open_selected_run(
    path: str | os.PathLike[str],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    every: int = 1,
    recover_unsafe: bool = False,
    tag_pattern: str | None = None,
    parameter_order: Sequence[str] | None = None,
    one_file_per_epoch: bool = False,
) -> Run:
    """`open_run` of `path` with the parameter filters applied and, with `one_file_per_epoch`, the
    files numbered epoch 1..N before `every` thins them (so file k stays epoch k)."""
    if every < 1:
        raise BadInputError(f"--every must be at least 1, got {every}")
    order = tuple(parameter_order) if parameter_order else None
    if not one_file_per_epoch:
        run = open_run(path, every=every, recover_unsafe=recover_unsafe, tag_pattern=tag_pattern,
                       parameter_order=order)
    else:
        run = subsample(number_files_as_epochs(
            open_run(path, recover_unsafe=recover_unsafe, tag_pattern=tag_pattern, parameter_order=order)), every)
    return select(run, include, exclude)


def load_trajectory(
    path: str | os.PathLike[str],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    every: int = 1,
    device: str | torch.device = "auto",
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    progress: Callable[[int, int], None] | None = None,
    recover_unsafe: bool = False,
    tag_pattern: str | None = None,
    parameter_order: Sequence[str] | None = None,
    granularity: str = GRANULARITY_TENSOR,
    one_file_per_epoch: bool = False,
) -> Trajectory:
    """Read a checkpoint directory, one checkpoint, or a live log into the trajectory table.

    `one_file_per_epoch=True` numbers the checkpoints epoch 1..N in their time order (one file is
    one epoch), for checkpoints that record no step or epoch (`number_files_as_epochs`).

    `tag_pattern` reads `path` as TensorBoard event files whose per-layer norm tags match this
    regex (named group `param`), instead of sniffing the layout.

    `recover_unsafe=True` reads the tensors of torch files that need other globals through a
    restricted unpickler that turns every non-tensor object into an inert placeholder (nothing in
    the file runs); by default such files are refused.

    `parameter_order` (the model's `named_parameters()` names) maps optimizer state to parameters
    where the weights file does not keep their order (safetensors without a transformers config).

    `granularity="row"` also gives each tensor's per-row (per-neuron) angles and norms, computed in
    the same pass (`Trajectory.rows`, summarised by `normscope.analysis.row_equilibrium.row_report`).
    """
    check_granularity(granularity)
    run = open_selected_run(path, include=include, exclude=exclude, every=every, recover_unsafe=recover_unsafe,
                            tag_pattern=tag_pattern, parameter_order=parameter_order,
                            one_file_per_epoch=one_file_per_epoch)
    return trajectory_from_run(run, device=device, bucket_bytes=bucket_bytes, progress=progress,
                               granularity=granularity)


def load_with_options(path: str | os.PathLike[str], options, **kwargs) -> Trajectory:
    """`load_trajectory` driven by a `RunOptions` (`normscope.analysis.runner`): its include/exclude
    globs, `every`, device and `one_file_per_epoch`; `kwargs` are `load_trajectory`'s other arguments."""
    return load_trajectory(path, include=options.include, exclude=options.exclude, every=options.every,
                           device=options.device, one_file_per_epoch=options.one_file_per_epoch, **kwargs)
