"""Follow a run as it grows: a tracker log incrementally, anything else by re-reading on change.

`LiveSource(path).poll()` returns a fresh `Trajectory` when something new arrived and None when
nothing changed, so a viewer can refresh cheaply at a fixed interval.
"""

from __future__ import annotations

import os
from pathlib import Path

from normscope.api import trajectory_from_run
from normscope.errors import BadInputError, NormscopeError
from normscope.sources._files import walk
from normscope.sources.jsonl_log import LogFollower, find_log_file, live_log_run
from normscope.trajectory import Trajectory, build_trajectory

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


class LiveSource:
    """What `normscope watch` follows. Raises BadInputError at once when `path` is unusable."""

    def __init__(self, path: str | os.PathLike[str], *, tag_pattern: str | None = None) -> None:
        self.path = Path(path)
        self.tag_pattern = tag_pattern
        self.follower: LogFollower | None = None
        self._fingerprint: tuple | None = None
        self._first = True
        self.last_error: str | None = None
        if self.path.suffix == ".jsonl" and not self.path.exists():
            self.follower = LogFollower(self.path)  # a run about to start: wait for its log
        elif not self.path.exists():
            raise BadInputError(f"no such file or directory: {self.path}")
        elif tag_pattern is None and (log := find_log_file(self.path)) is not None:
            self.follower = LogFollower(log)

    def poll(self) -> Trajectory | None:
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
        run = live_log_run(follower.log)
        if not run.stats:
            return build_trajectory([], layout=run.layout, root=run.root, warnings=run.warnings)
        return trajectory_from_run(run)

    def _open(self):
        if self.tag_pattern is not None:
            from normscope.sources.tensorboard_log import read_tensorboard

            return read_tensorboard(self.path, self.tag_pattern)
        from normscope.sources import open_run

        return open_run(self.path)

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
        return trajectory_from_run(run)
