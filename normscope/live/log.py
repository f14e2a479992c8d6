"""normscope's own live log (JSON Lines written by `normscope.track`), read whole or followed.

The log may be read while a run is still writing it, so the reader is forgiving where it can be:

* a partial last line (no newline yet) is left for later (follower) or ignored with a warning;
* corrupt lines are skipped, counted, and the first one reported;
* a second header with the same parameters is a resumed run: records continue, and a record whose
  step is not after the last one supersedes the records from that step on (the newer run wins);
  a header with different parameters starts a new run and drops what came before;
* a follower keeps a byte offset, parses only up to the last newline, and treats a smaller file or
  a new inode (truncated / rotated) as a restart: it rereads from the top, keeping the header it
  had when the new file starts with records (copytruncate rotation).

Readers produce `Run(stats=[SnapshotStats, ...], snapshots=[])`, so the analyses run unchanged.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normscope.errors import BadInputError
from normscope.snapshot import (
    ORDER_LOG,
    ParamGroup,
    ParamStats,
    Run,
    SnapshotMeta,
    SnapshotStats,
)
from normscope import _json
from normscope.live.schema import (
    HEADER_TYPE,
    NONFINITE_FIELD,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    STAT_FIELDS,
    STEP_TYPE,
)

LAYOUT = "jsonl"
_SNIFF_BYTES = 1 << 20
_READ_BLOCK = 8 << 20


@dataclass(frozen=True)
class LogParam:
    name: str
    shape: tuple[int, ...]
    dtype: str
    numel: int
    group: int


@dataclass(frozen=True)
class LogHeader:
    run_id: str
    every: int
    optimizer: str | None
    params: tuple[LogParam, ...]
    param_groups: tuple[dict[str, Any], ...]
    schema_version: int

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]


@dataclass(frozen=True)
class LogRecord:
    step: int
    epoch: float | None
    time: float | None
    groups: tuple[dict[str, Any], ...]  # hyper-parameters in force, one per optimizer param group
    stats: dict[str, tuple[float, ...]]  # STAT_FIELDS -> per-parameter values, NaN where null
    nonfinite: tuple[int, ...] | None
    line: int


@dataclass
class LiveLog:
    """What has been parsed so far: the header, the records in step order, and what was skipped."""

    path: str
    header: LogHeader | None = None
    records: list[LogRecord] = field(default_factory=list)
    corrupt_lines: int = 0
    first_corrupt: str | None = None
    superseded: int = 0
    notes: list[str] = field(default_factory=list)
    partial_tail: bool = False

    @property
    def warnings(self) -> list[str]:
        out = list(self.notes)
        if self.corrupt_lines:
            out.append(f"skipped {self.corrupt_lines} corrupt line(s) in {self.path} "
                       f"(first: {self.first_corrupt})")
        if self.superseded:
            out.append(f"{self.superseded} record(s) superseded by a resumed run's later records")
        if self.partial_tail:
            out.append(f"ignored a partial last line in {self.path} (is the run still writing?)")
        return out


_MAX_COUNT = 2**63 - 1  # a count past int64 cannot be a tensor's size, and would not fit a column


def _as_count(value: Any, what: str) -> int:
    """A non-negative integer from the log: 3, not 3.0, "3" or True, and within int64."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_COUNT:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "…"
        raise ValueError(f"{what} is {shown}, not a count")
    return value


def _log_param(p: Any) -> LogParam:
    if not isinstance(p, dict):
        raise TypeError(f"a parameter entry is {type(p).__name__}, not an object")
    if not isinstance(p["shape"], list | tuple):
        raise TypeError("a parameter's shape is not a list")
    shape = tuple(_as_count(d, "a dimension") for d in p["shape"])
    numel = _as_count(p["numel"], "numel")
    if numel != math.prod(shape):
        raise ValueError(f"numel {numel} of {str(p['name'])[:80]!r} is not the product of its "
                         f"shape {list(shape)[:8]}")
    return LogParam(name=str(p["name"]), shape=shape, dtype=str(p["dtype"]), numel=numel,
                    group=_as_count(p.get("group", 0), "group"))


_GROUP_NUMBERS = ("lr", "weight_decay", "momentum", "dampening", "eps")
_GROUP_FLAGS = ("nesterov", "decoupled_weight_decay")


def _param_group_dict(value: Any) -> dict[str, Any]:
    """An optimizer param group as the tracker writes it; the hyper-parameters it reads are
    numbers (or null), its flags booleans (or null)."""
    if not isinstance(value, dict):
        raise TypeError(f"a param group is {type(value).__name__}, not an object")
    for key in _GROUP_NUMBERS:
        if value.get(key) is not None:
            _as_float(value[key])
    for key in _GROUP_FLAGS:
        if value.get(key) is not None and not isinstance(value[key], bool):
            raise TypeError(f"{key} is {value[key]!r}, not true/false")
    betas = value.get("betas")
    if betas is not None:
        if not isinstance(betas, list) or None in betas:
            raise TypeError(f"betas is {betas!r}, not a list of numbers")
        for beta in betas:
            _as_float(beta)
    names = value.get("params", ())
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise TypeError("a param group's params are not a list of names")
    return dict(value)


def _parse_header(obj: dict[str, Any]) -> LogHeader:
    if obj.get("schema") != SCHEMA_NAME:
        raise ValueError(f"header schema is {obj.get('schema')!r}, not {SCHEMA_NAME!r}")
    if not isinstance(obj["params"], list):
        raise TypeError("header params are not a list")
    params = tuple(_log_param(p) for p in obj["params"])
    if not params:
        raise ValueError("header lists no parameters")
    groups = obj.get("param_groups", ())
    if not isinstance(groups, list | tuple):
        raise TypeError("header param_groups are not a list")
    return LogHeader(run_id=str(obj.get("run_id", "")), every=_as_count(obj.get("every", 1), "every"),
                     optimizer=None if obj.get("optimizer") is None else str(obj["optimizer"]),
                     params=params, param_groups=tuple(_param_group_dict(g) for g in groups),
                     schema_version=_as_count(obj["schema_version"], "schema_version"))


def _as_float(value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    number = float(value)  # OverflowError for an integer past a float's range
    if math.isinf(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def _parse_record(obj: dict[str, Any], header: LogHeader, line: int) -> LogRecord:
    n = len(header.params)
    stats = {}
    for name in STAT_FIELDS:
        values = obj[name]
        if not isinstance(values, list) or len(values) != n:
            raise ValueError(f"'{name}' has {len(values) if isinstance(values, list) else '?'} "
                             f"values, header has {n} parameters")
        stats[name] = tuple(_as_float(v) for v in values)
    nonfinite = obj.get(NONFINITE_FIELD)
    if nonfinite is not None and (not isinstance(nonfinite, list) or len(nonfinite) != n):
        raise ValueError("'nonfinite' does not match the header's parameters")
    step = obj["step"]
    if isinstance(step, bool) or not isinstance(step, int) or not -_MAX_COUNT <= step <= _MAX_COUNT:
        shown = repr(step) if len(repr(step)) <= 40 else repr(step)[:40] + "…"
        raise TypeError(f"step is {shown}, not an int64 integer")
    epoch = obj.get("epoch")
    groups = obj.get("groups", ())
    if isinstance(groups, dict):
        groups = [groups]
    if not isinstance(groups, list | tuple):
        raise TypeError("groups are not a list")
    return LogRecord(step=step, epoch=None if epoch is None else _as_float(epoch),
                     time=None if obj.get("time") is None else _as_float(obj["time"]),
                     groups=tuple(_param_group_dict(g) for g in groups), stats=stats,
                     nonfinite=None if nonfinite is None else tuple(_as_count(c, "a non-finite count")
                                                                    for c in nonfinite),
                     line=line)


class LogParser:
    """Feeds complete lines into a `LiveLog`; knows nothing about files."""

    def __init__(self, path: str) -> None:
        self.log = LiveLog(path=path)
        self.lines_seen = 0

    def restart(self) -> None:
        """The file was truncated or replaced: keep the header for a headerless continuation."""
        self.lines_seen = 0

    def feed(self, lines: Iterable[str]) -> list[LogRecord]:
        new: list[LogRecord] = []
        for text in lines:
            self.lines_seen += 1
            record = self._feed_line(text, self.lines_seen)
            if record is not None:
                new.append(record)
        return new

    def _corrupt(self, line: int, reason: str) -> None:
        self.log.corrupt_lines += 1
        if self.log.first_corrupt is None:
            self.log.first_corrupt = f"line {line}: {reason}"

    def _feed_line(self, text: str, line: int) -> LogRecord | None:
        # a writer that kept its offset across a truncation leaves a run of NULs before its line
        text = text.lstrip("\x00")
        if not text.strip():
            return None
        try:
            obj = _json.loads(text)
            if not isinstance(obj, dict):
                raise TypeError("not a JSON object")
            kind = obj.get("type")
            if kind == HEADER_TYPE:
                self._take_header(_parse_header(obj), line)
                return None
            if kind != STEP_TYPE:
                raise ValueError(f"unknown record type {kind!r}")
            if self.log.header is None:
                raise ValueError("step record before any header")
            record = _parse_record(obj, self.log.header, line)
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            self._corrupt(line, str(exc)[:120])
            return None
        self._append(record)
        return record

    def _take_header(self, header: LogHeader, line: int) -> None:
        old = self.log.header
        if header.schema_version > SCHEMA_VERSION:
            self.log.notes.append(f"log schema version {header.schema_version} is newer than this "
                                  f"normscope's ({SCHEMA_VERSION}); reading what it understands")
        if old is not None and [(p.name, p.shape) for p in old.params] != [
                (p.name, p.shape) for p in header.params]:
            if self.log.records:
                self.log.notes.append(f"a new run with different parameters starts at line {line}; "
                                      f"{len(self.log.records)} earlier record(s) dropped")
            self.log.records = []
        self.log.header = header

    def _append(self, record: LogRecord) -> None:
        records = self.log.records
        if records and record.step <= records[-1].step:
            keep = [r for r in records if r.step < record.step]
            self.log.superseded += len(records) - len(keep)
            records[:] = keep
        records.append(record)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


class LogFollower:
    """Follows a growing log: `poll()` parses what was appended since the last call.

    Only bytes up to the last newline are consumed, so a line being written is read once whole.
    A file smaller than the offset, or a new inode at the path, is a restart.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.offset = 0
        self.inode: int | None = None
        self.restarts = 0
        self._parser = LogParser(str(self.path))

    @property
    def log(self) -> LiveLog:
        return self._parser.log

    def poll(self) -> list[LogRecord]:
        """The records appended since the last poll; a one-line BadInputError when the path can
        no longer be read as a log (replaced by a directory, permission taken away)."""
        try:
            return self._poll()
        except FileNotFoundError:
            return []  # rotated away between the stat and the open: wait
        except OSError as exc:
            raise BadInputError(f"cannot read {self.path}: {exc.strerror or exc}") from None

    def _poll(self) -> list[LogRecord]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []  # rotated away and not yet recreated: wait
        if not stat.S_ISREG(st.st_mode):
            raise BadInputError(f"{self.path} is no longer a file (a tracker log was expected)")
        if self.inode is not None and (st.st_ino != self.inode or st.st_size < self.offset):
            self.offset = 0
            self.restarts += 1
            self._parser.restart()
        self.inode = st.st_ino
        new: list[LogRecord] = []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            while True:
                block = f.read(_READ_BLOCK)
                if not block:
                    break
                end = block.rfind(b"\n")
                if end < 0:
                    if len(block) == _READ_BLOCK:  # one line longer than a block: keep reading
                        block += f.read()
                        end = block.rfind(b"\n")
                    if end < 0:
                        break
                new += self._parser.feed(_decode(block[: end + 1]).splitlines())
                self.offset += end + 1
                f.seek(self.offset)
        return new


def parse_log_bytes(data: bytes, path: str) -> LiveLog:
    """Parse a whole log held in memory; a final line without a newline is tried, else ignored."""
    parser = LogParser(path)
    complete, _, tail = data.rpartition(b"\n")
    parser.feed(_decode(complete).splitlines())
    if tail.strip():
        before = parser.log.corrupt_lines
        parser.feed([_decode(tail)])
        if parser.log.corrupt_lines > before:  # a line cut short by a writer, not a corrupt one
            parser.log.corrupt_lines = before
            if before == 0:
                parser.log.first_corrupt = None
            parser.log.partial_tail = True
    return parser.log


def load_live_log(path: str | os.PathLike[str]) -> LiveLog:
    """Read a whole tracker log. Raises BadInputError when it is empty or has no usable header."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise BadInputError(f"{path} is empty: no tracker log header")
    log = parse_log_bytes(data, str(path))
    if log.header is None:
        why = f"; {log.first_corrupt}" if log.first_corrupt else ""
        raise BadInputError(f"{path} is not a normscope tracker log (no valid header line{why})")
    return log


def log_to_stats(log: LiveLog, start: int = 0) -> list[SnapshotStats]:
    """One SnapshotStats per record (from record `start` on: a follower converts only what
    arrived). Against-the-previous-snapshot fields (dot_prev, diff_sq) are filled only where the
    previous record is the previous optimizer step; otherwise the tracker does not know them (it
    keeps no copy of the weights between logged steps)."""
    header = log.header
    if header is None:
        return []
    out: list[SnapshotStats] = []
    shapes = {p.name: p.shape for p in header.params}
    dtypes = {p.name: p.dtype for p in header.params}
    prev_step: int | None = log.records[start - 1].step if 0 < start <= len(log.records) else None
    for record in log.records[start:]:
        consecutive = prev_step is not None and record.step == prev_step + 1
        prev_step = record.step
        s = record.stats
        params = {}
        for j, p in enumerate(header.params):
            w_sq, w0_sq, dw_sq = s["w_sq"][j], s["w0_sq"][j], s["dw_sq"][j]
            nonfinite = record.nonfinite[j] if record.nonfinite is not None else 0
            params[p.name] = ParamStats(
                numel=p.numel, norm_sq=w_sq, nonfinite=nonfinite,
                dot_prev=(w_sq + w0_sq - dw_sq) / 2.0 if consecutive else None,
                diff_sq=dw_sq if consecutive else None,
                grad_norm_sq=_none_if_nan(s["g_sq"][j]), grad_dot=_none_if_nan(s["wg"][j]),
                update_norm_sq=_none_if_nan(dw_sq), norm_sq_before=_none_if_nan(w0_sq))
        out.append(SnapshotStats(meta=_meta(log, header, record), params=params,
                                 shapes=shapes, dtypes=dtypes))
    return out


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _param_group(names: tuple[str, ...], hp: dict[str, Any]) -> ParamGroup:
    betas = hp.get("betas")
    return ParamGroup(
        params=names, lr=_opt_float(hp.get("lr")), weight_decay=_opt_float(hp.get("weight_decay")),
        momentum=_opt_float(hp.get("momentum")), dampening=_opt_float(hp.get("dampening")),
        nesterov=hp.get("nesterov"), betas=tuple(float(b) for b in betas) if betas else None,
        eps=_opt_float(hp.get("eps")), decoupled_weight_decay=hp.get("decoupled_weight_decay"))


def _meta(log: LiveLog, header: LogHeader, record: LogRecord) -> SnapshotMeta:
    groups = []
    for gi, static in enumerate(header.param_groups):
        names = tuple(static.get("params", ()))
        hp = {**static, **(record.groups[gi] if gi < len(record.groups) else {})}
        groups.append(_param_group(names, hp))
    return SnapshotMeta(
        path=log.path, step=record.step, epoch=record.epoch, order_source=ORDER_LOG,
        optimizer=header.optimizer, param_groups=tuple(groups),
        hyperparams_source="tracker log (per step)",
        extra={"run_id": header.run_id, "time": record.time, "line": record.line})


def live_log_run(log: LiveLog) -> Run:
    return Run(root=log.path, layout=LAYOUT, snapshots=[], ordering=ORDER_LOG,
               warnings=log.warnings, stats=log_to_stats(log))


def find_log_file(path: str | os.PathLike[str]) -> Path | None:
    """The tracker log at `path`: the file itself, or the only tracker log in a directory."""
    path = Path(path)
    if path.is_file():
        return path if is_jsonl_log(path) else None
    if path.is_dir():
        logs = sorted(p for p in path.glob("*.jsonl") if is_jsonl_log(p))
        if len(logs) == 1:
            return logs[0]
        if len(logs) > 1:
            names = ", ".join(p.name for p in logs[:4])
            raise BadInputError(f"{path} holds {len(logs)} tracker logs ({names}); name one")
    return None


def is_jsonl_log(path: str | os.PathLike[str]) -> bool:
    """True when the file's first line is a normscope tracker header (content, not extension)."""
    try:
        with open(path, "rb") as f:
            first = f.read(_SNIFF_BYTES).split(b"\n", 1)[0]
        obj = json.loads(first)  # lenient: a damaged header is still recognised, then refused
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and obj.get("schema") == SCHEMA_NAME


def read_jsonl_log(path: str | os.PathLike[str]) -> Run:
    """Read a tracker log (file, or a directory holding exactly one) as a Run of precomputed stats."""
    file = Path(path) if Path(path).is_file() else find_log_file(path)
    if file is None:
        raise BadInputError(f"no normscope tracker log found at {path}")
    log = load_live_log(file)
    if not log.records:
        raise BadInputError(f"{file} has a header but no step records yet")
    return live_log_run(log)


class TrackerLogs:
    """The registry's entry for tracker logs: a log file, or a directory holding one."""

    name = LAYOUT

    def sniff(self, path: str) -> bool:
        p = Path(path)
        if p.is_file():
            return is_jsonl_log(p)
        return p.is_dir() and any(is_jsonl_log(f) for f in p.glob("*.jsonl"))

    def open(self, path: str) -> Run:
        return read_jsonl_log(path)
