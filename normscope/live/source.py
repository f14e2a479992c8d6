"""Follow a run as it grows: a tracker log incrementally, anything else by re-reading on change.

`LiveSource(path).poll()` returns a fresh `Trajectory` when something new arrived and None when
nothing changed, so a viewer can refresh cheaply at a fixed interval.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from normscope.api import open_selected_run, select, select_stats, trajectory_from_run
from normscope.errors import BadInputError, NormscopeError
from normscope.file_tree import walk
from normscope.live.log import LAYOUT, LiveLog, LogFollower, find_log_file, log_to_stats
from normscope.snapshot import ORDER_LOG
from normscope.sources.tensorboard_log import read_tensorboard
from normscope.trajectory import Trajectory, TrajectoryBuilder, build_trajectory

_FINGERPRINT_LIMIT = 100_000  # files looked at per refresh of a checkpoint directory


def _fingerprint(path: Path) -> tuple:
    if path.is_file():
        st = path.stat()
        return ((str(path), st.st_size, st.st_mtime_ns),)
    out = []
    for i, entry in enumerate(walk(path)):
        if i >= _FINGERPRINT_LIMIT:
            break
        try:
            st = entry.stat()
        except OSError:  # removed while we looked (checkpoint rotation)
            continue
        out.append((entry.path, st.st_size, st.st_mtime_ns))
    return tuple(out)


@dataclass
class _LogRows:
    """The table's rows of the records converted so far, and what tells the log only grew."""

    header: Any
    builder: TrajectoryBuilder
    count: int = 0  # records converted
    last: Any = None  # the last of them, as the log held it
    table: Any = None  # the trajectory table of the `count` records (a DataFrame), None before the first
    tabled: int = 0  # the builder's snapshots that `table` holds

    def grow_table(self) -> Any:
        """The table with the rows the builder gained since the last call appended: only the new
        snapshots are made into a frame (the same column types), not the whole table again."""
        if self.table is not None and self.tabled == self.builder.snapshot_count:
            return self.table
        added = self.builder.table(since=self.tabled)
        self.tabled = self.builder.snapshot_count
        self.table = added if self.table is None else pd.concat([self.table, added], ignore_index=True)
        return self.table


def _empty_file(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size == 0
    except OSError:
        return False


class LiveSource:
    """What `normscope watch` follows. Raises BadInputError at once when `path` is unusable."""

    def __init__(self, path: str | os.PathLike[str], *, tag_pattern: str | None = None,
                 one_file_per_epoch: bool = False, include: Sequence[str] = (),
                 exclude: Sequence[str] = (), device: str = "auto") -> None:  # fmt: skip
        """`include`/`exclude`: the parameters followed (`api.select`'s globs); `device`: where a
        checkpoint directory's tensors are reduced at each re-read."""
        self.path = Path(path)
        self.tag_pattern = tag_pattern
        self.one_file_per_epoch = one_file_per_epoch  # checkpoints numbered epoch 1..N (`--one-file-per-epoch`)
        self.include, self.exclude, self.device = tuple(include), tuple(exclude), device
        self.follower: LogFollower | None = None
        self._fingerprint: tuple | None = None
        self._first = True
        self._rows: _LogRows | None = None
        self.last_error: str | None = None
        if self.path.suffix == ".jsonl" and (not self.path.exists() or _empty_file(self.path)):
            self.follower = LogFollower(self.path)  # a run about to start: wait for its log
        elif not self.path.exists():
            raise BadInputError(f"no such file or directory: {self.path}")
        elif tag_pattern is None and (log := find_log_file(self.path)) is not None:
            self.follower = LogFollower(log)
        if one_file_per_epoch and (self.follower is not None or tag_pattern is not None):
            raise BadInputError(f"--one-file-per-epoch numbers checkpoint files, and {self.path} is a log of "
                                "steps; give --steps-per-epoch N instead")

    def poll(self) -> Trajectory | None:
        """The run as it stands, when something changed since the last poll.

        Returns:
            The trajectory (a tracker log's: the previous one's rows and the new records'), or
            None when nothing changed or the source cannot be read right now (`last_error` says why).

        Raises:
            NormscopeError: on the first poll, when the source cannot be read.
        """
        if self.follower is not None:
            return self._poll_log(self.follower)
        return self._poll_reload()

    def _poll_log(self, follower: LogFollower) -> Trajectory | None:
        restarts = follower.restarts
        try:
            new = follower.poll()
        except NormscopeError as exc:
            if self._first:
                raise
            # the log was replaced or locked away: keep the last view, try again next time
            self.last_error = exc.message
            return None
        self.last_error = None
        if not (new or self._first or follower.restarts != restarts):
            return None
        self._first = False
        log = follower.log
        if not log.records:
            self._rows = None
            return build_trajectory([], layout=LAYOUT, root=log.path, warnings=log.warnings)
        self._add_new_records(log)
        rows = self._rows
        # what `TrajectoryBuilder.trajectory` returns, with the table grown rather than rebuilt; a
        # shallow copy (copy-on-write): a caller that changes its table leaves the next one alone
        return Trajectory(table=rows.grow_table().copy(deep=False), snapshots=list(rows.builder.metas),
                          layout=LAYOUT, root=log.path, ordering=ORDER_LOG,
                          warnings=[*log.warnings, *rows.builder.notes])

    def _add_new_records(self, log: LiveLog) -> None:
        """Add the records that arrived to the table's rows. Only when the log changed other than
        by growing (a new header, a resumed run superseding records, a restart) is every record
        converted again."""
        rows, records = self._rows, log.records
        grown = (
            rows is not None
            and rows.header is log.header
            and len(records) >= rows.count
            and records[rows.count - 1] is rows.last
        )
        if not grown:
            rows = self._rows = _LogRows(header=log.header, builder=TrajectoryBuilder())
        rows.builder.add(select_stats(log_to_stats(log, start=rows.count), self.include, self.exclude))
        rows.count, rows.last = len(records), records[-1]

    def _open(self):
        if self.tag_pattern is not None:
            return select(read_tensorboard(self.path, self.tag_pattern), self.include, self.exclude)
        return open_selected_run(self.path, one_file_per_epoch=self.one_file_per_epoch, include=self.include,
                                 exclude=self.exclude)

    def _poll_reload(self) -> Trajectory | None:
        fingerprint = _fingerprint(self.path)
        if fingerprint == self._fingerprint:
            return None
        try:
            run = self._open()
        except NormscopeError as exc:
            if self._first:
                raise
            # a checkpoint half-written right now: keep the last view, try again next time
            self.last_error = exc.message
            return None
        self._fingerprint = fingerprint
        self._first = False
        self.last_error = None
        return trajectory_from_run(run, device=self.device)
