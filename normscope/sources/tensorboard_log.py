"""Per-layer norm scalars from TensorBoard event files, read without TensorFlow.

Recognised tags (scalars are norms, not squares):

* Lightning's `grad_norm` helper: `grad_2.0_norm/{param}`               -> |g|
* Composer:                       `layer_grad_l2_norm/{param}`          -> |g|
* a user regex (`tag_pattern`) with a named group `param`               -> |w|,
  or |g| where its optional group `stat` matched text containing "grad",
  e.g. `(?P<stat>weight|grad)_norm/(?P<param>.+)`.

`epoch` and Lightning's LearningRateMonitor `lr-{Optimizer}` scalars are picked up when present.
Event files do not say parameter shapes, so `numel` is 0 and shapes are unknown.
"""

from __future__ import annotations

import bisect
import fnmatch
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from normscope.errors import BadInputError, ConfigError
from normscope.snapshot import (
    ORDER_LOG,
    ParamGroup,
    ParamStats,
    Run,
    SnapshotMeta,
    SnapshotStats,
)
from normscope.file_tree import walk

LAYOUT = "tensorboard"
_EVENT_GLOB = "events.out.tfevents*"
BUILTIN_GRAD_PATTERNS = (
    re.compile(r"^grad_2(?:\.0)?_norm[/_](?P<param>.+)$"),
    re.compile(r"^layer_grad_l2_norm/(?P<param>.+)$"),
)
_LR_TAG = re.compile(r"^lr-[^/]+$")
_EPOCH_TAGS = ("epoch", "trainer/epoch")


@dataclass(frozen=True)
class NormPoint:
    step: int
    param: str
    stat: str  # "weight" or "grad"
    norm: float


def compile_tag_pattern(tag_pattern: str | None) -> re.Pattern[str] | None:
    if tag_pattern is None:
        return None
    try:
        pattern = re.compile(tag_pattern)
    except re.error as exc:
        raise ConfigError(f"--tag-pattern {tag_pattern!r} is not a valid regex: {exc}") from None
    if "param" not in pattern.groupindex:
        raise ConfigError(f"--tag-pattern {tag_pattern!r} needs a named group (?P<param>...)")
    return pattern


def classify_tag(tag: str, user: re.Pattern[str] | None) -> tuple[str, str] | None:
    """(param, stat) for a per-layer norm tag, None for any other tag. The user's pattern wins."""
    if user is not None:
        m = user.search(tag)
        if m:
            stat = m.groupdict().get("stat") or ""
            return m.group("param"), "grad" if "grad" in stat.lower() else "weight"
    for pattern in BUILTIN_GRAD_PATTERNS:
        m = pattern.match(tag)
        if m and m.group("param") != "total":
            return m.group("param"), "grad"
    return None


def find_event_dir(path: str | os.PathLike[str]) -> Path:
    """The one directory holding event files at or under `path` (an event file names its dir)."""
    path = Path(path)
    if path.is_file():
        if not path.name.startswith("events.out.tfevents"):
            raise BadInputError(f"{path} is not a TensorBoard event file (events.out.tfevents*)")
        return path
    if not path.is_dir():
        raise BadInputError(f"no such file or directory: {path}")
    dirs = sorted({Path(p).parent for p in _event_files(path)})
    if not dirs:
        raise BadInputError(f"no TensorBoard event files (events.out.tfevents*) under {path}")
    if len(dirs) > 1:
        shown = ", ".join(str(d.relative_to(path)) for d in dirs[:4])
        raise BadInputError(f"{path} holds {len(dirs)} TensorBoard runs ({shown}); name one")
    return dirs[0]


def has_event_files(path: str | os.PathLike[str]) -> bool:
    path = Path(path)
    if path.is_file():
        return path.name.startswith("events.out.tfevents")
    return path.is_dir() and any(True for _ in _event_files(path))


def _event_files(root: Path) -> Iterator[str]:
    for entry in walk(root):
        if fnmatch.fnmatchcase(entry.name, _EVENT_GLOB) and entry.is_file():
            yield entry.path


def _accumulator(where: Path):
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # lazy: optional extra
    except ImportError:
        raise BadInputError("reading TensorBoard logs needs the tensorboard package: "
                            "pip install 'normscope[tensorboard]'") from None
    # size_guidance 0 keeps every point; the default samples 10,000 per tag
    acc = EventAccumulator(str(where), size_guidance={"scalars": 0})
    try:
        acc.Reload()
    except Exception as exc:  # noqa: BLE001 - corrupt records surface as assorted errors
        raise BadInputError(f"cannot read TensorBoard events at {where}: {exc}") from None
    return acc


def read_tensorboard(path: str | os.PathLike[str], tag_pattern: str | None = None) -> Run:
    """Read per-layer norm scalars from TensorBoard event files into a Run of precomputed stats."""
    user = compile_tag_pattern(tag_pattern)
    where = find_event_dir(path)
    acc = _accumulator(where)
    tags = list(acc.Tags().get("scalars", []))
    points: list[NormPoint] = []
    for tag in tags:
        hit = classify_tag(tag, user)
        if hit is None:
            continue
        param, stat = hit
        points += [NormPoint(int(e.step), param, stat, float(e.value)) for e in acc.Scalars(tag)]
    if not points and not any(acc.Tags().values()):
        raise BadInputError(f"the event files in {where} hold no readable events "
                            "(damaged, or nothing written to them yet)")
    if not points:
        shown = ", ".join(tags[:6]) + (" …" if len(tags) > 6 else "")
        raise BadInputError(f"no per-layer norm scalars in {where} (scalar tags: {shown or 'none'}); "
                            "pass --tag-pattern with a (?P<param>...) group")
    epochs = _last_value_by_step(acc, [t for t in _EPOCH_TAGS if t in tags])
    lrs = _last_value_by_step(acc, [t for t in tags if _LR_TAG.match(t)][:1])
    stats = points_to_stats(points, str(where), epochs=epochs, lrs=lrs)
    warnings = []
    nonfinite = sum(not math.isfinite(p.norm) for p in points)
    if nonfinite:
        warnings.append(f"{nonfinite} non-finite norm value(s) in {where}")
    return Run(root=str(where), layout=LAYOUT, snapshots=[], ordering=ORDER_LOG,
               warnings=warnings, stats=stats)


def _last_value_by_step(acc, tags: list[str]) -> dict[int, float]:
    out: dict[int, float] = {}
    for tag in tags:
        for e in acc.Scalars(tag):
            out[int(e.step)] = float(e.value)
    return out


def _value_at_or_before(series: dict[int, float], steps: list[int], step: int) -> float | None:
    i = bisect.bisect_right(steps, step)
    return series[steps[i - 1]] if i else None


def points_to_stats(points: list[NormPoint], path: str, *, epochs: dict[int, float] | None = None,
                    lrs: dict[int, float] | None = None) -> list[SnapshotStats]:
    """One SnapshotStats per step that has any norm point; a later point at a step wins."""
    by_step: dict[int, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for p in points:
        by_step[p.step][p.param][p.stat] = p.norm
    epochs, lrs = epochs or {}, lrs or {}
    epoch_steps, lr_steps = sorted(epochs), sorted(lrs)
    out = []
    for step in sorted(by_step):
        params = {}
        for param, values in by_step[step].items():
            w, g = values.get("weight"), values.get("grad")
            params[param] = ParamStats(numel=0, norm_sq=w * w if w is not None else math.nan,
                                       nonfinite=int(w is not None and not math.isfinite(w)),
                                       grad_norm_sq=g * g if g is not None else None)
        lr = _value_at_or_before(lrs, lr_steps, step)
        groups = (ParamGroup(params=tuple(params), lr=lr),) if lr is not None else ()
        meta = SnapshotMeta(path=path, step=step, epoch=_value_at_or_before(epochs, epoch_steps, step),
                            order_source=ORDER_LOG, param_groups=groups,
                            hyperparams_source="TensorBoard lr scalar" if groups else None)
        out.append(SnapshotStats(meta=meta, params=params, shapes={}, dtypes={}))
    return out


class TensorBoardEvents:
    """The registry's entry for TensorBoard event files: the built-in tag patterns, plus the user's
    `tag_pattern` (a regex with a named group `param`) when given."""

    name = LAYOUT

    def __init__(self, tag_pattern: str | None = None) -> None:
        self.tag_pattern = tag_pattern

    def sniff(self, path: str) -> bool:
        return has_event_files(path)

    def open(self, path: str) -> Run:
        return read_tensorboard(path, self.tag_pattern)
