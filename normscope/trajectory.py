"""The trajectory table: one tidy row per (snapshot, parameter). Everything downstream reads only this.

Columns (units in the names; NaN where a source does not have the quantity):

    snapshot        int     0-based position in time order
    step            Int64   optimizer step (nullable)
    epoch           float   epoch (nullable; fractional for mid-epoch saves)
    path            str     file or directory the snapshot came from
    param           str     clean parameter name, e.g. "layer1.0.conv1.weight"
    layer           str     the module that owns it, e.g. "layer1.0.conv1"
    kind            str     "weight" (ndim > 1), "bias", "norm" (1-D scale), "buffer", "other"
    shape           str     e.g. "64x3x3x3"
    numel           int
    dtype           str     "float32", "bfloat16", ...
    norm            float   |w|
    norm_sq         float   |w|^2
    dot_prev        float   <w_t, w_{t-1}>
    delta_norm      float   |w_t - w_{t-1}|
    angle_rad       float   angle between w_t and w_{t-1}
    nonfinite       int     count of NaN/Inf elements
    buf_dot         float   <w, momentum_buffer or exp_avg>   (checkpoints with optimizer state)
    buf_norm        float   |momentum_buffer or exp_avg|
    exp_avg_sq_sum  float   Adam: sum of exp_avg_sq
    grad_norm       float   |g|        (live logs)
    grad_dot        float   <w, g>     (live logs)
    update_norm     float   |Δw| of the logged step (live logs)
    update_angle_rad float  angle between w before and after the logged step (live logs)
    optimizer       str     "SGD", "AdamW", ...
    lr, weight_decay, momentum, beta1, beta2   float   hyper-parameters of the param's group
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from normscope.snapshot import ParamGroup, SnapshotMeta, SnapshotStats, param_column

SCHEMA_VERSION = 1

COLUMNS = (
    "snapshot", "step", "epoch", "path", "param", "layer", "kind", "shape", "numel", "dtype",
    "norm", "norm_sq", "dot_prev", "delta_norm", "angle_rad", "nonfinite",
    "buf_dot", "buf_norm", "exp_avg_sq_sum", "grad_norm", "grad_dot", "update_norm",
    "update_angle_rad", "optimizer", "lr", "weight_decay", "momentum", "beta1", "beta2",
)

_BUFFER_SUFFIXES = ("running_mean", "running_var")
_NORM_SCALE_SUFFIXES = ("weight", "scale", "gamma", "g")


def layer_of(param: str) -> str:
    """The owning module's name: everything before the last dot (the parameter itself for top-level)."""
    head, dot, _ = param.rpartition(".")
    return head if dot else param


def kind_of(param: str, shape: tuple[int, ...]) -> str:
    """Classify a tensor by name and shape. Norm scales are 1-D "weight"s; matrices/kernels are weights."""
    leaf = param.rpartition(".")[2]
    if leaf in _BUFFER_SUFFIXES:
        return "buffer"
    if len(shape) > 1:
        return "weight"
    if leaf == "bias" or leaf.endswith("_bias") or leaf == "beta":
        return "bias"
    if len(shape) == 1 and (leaf in _NORM_SCALE_SUFFIXES or leaf.endswith("_weight")):
        return "norm"
    return "other"


def angle_between(norm_a: float, norm_b: float, dot: float | None, diff_sq: float | None) -> float:
    """Angle (radians) between two tensors from their reduced stats, accurate for tiny angles.

    arccos(<a,b>/|a||b|) cannot resolve angles below ~1e-8 rad; the chord form uses |a-b|^2, which
    the engine measures directly:  |a-b|^2 - (|a|-|b|)^2 = 2|a||b|(1-cos).
    """
    if norm_a <= 0 or norm_b <= 0 or not (math.isfinite(norm_a) and math.isfinite(norm_b)):
        return math.nan
    if diff_sq is not None and math.isfinite(diff_sq):
        chord_sq = max(diff_sq - (norm_a - norm_b) ** 2, 0.0) / (norm_a * norm_b)  # = 2(1-cos)
        return 2.0 * math.asin(min(1.0, math.sqrt(chord_sq) / 2.0))
    if dot is not None and math.isfinite(dot):
        return math.acos(max(-1.0, min(1.0, dot / (norm_a * norm_b))))
    return math.nan


@dataclass
class Trajectory:
    """The tidy table plus what is known about the run as a whole."""

    table: pd.DataFrame
    snapshots: list[SnapshotMeta]
    layout: str = "unknown"
    root: str = ""
    ordering: str = "unknown"
    warnings: list[str] = field(default_factory=list)
    framework: str | None = None  # the saver the source recognised, if any
    # "row": `rows[t]` holds each tensor's per-row spread over the interval ending at snapshot t
    # (`engine.rows.RowSpread`); "tensor": `rows` is empty
    granularity: str = "tensor"
    rows: list[Mapping[str, Any]] = field(default_factory=list)

    @property
    def params(self) -> list[str]:
        return list(dict.fromkeys(self.table["param"]))


def _group_of(meta: SnapshotMeta) -> dict[str, ParamGroup]:
    return {p: g for g in meta.param_groups for p in g.params}


def build_trajectory(
    stats: Iterable[SnapshotStats],
    *,
    layout: str = "unknown",
    root: str = "",
    ordering: str = "unknown",
    warnings: Iterable[str] = (),
    framework: str | None = None,
    granularity: str = "tensor",
) -> Trajectory:
    """Assemble per-snapshot stats (already in time order) into the tidy table.

    Parameters that appear or vanish between snapshots are noted in `warnings`, not fatal.
    Built column by column (a ResNet-shaped run has 34k rows, and a dict per row was slow);
    each value is what the per-row formulas in the module docstring give.
    """
    builder = TrajectoryBuilder()
    builder.add(stats)
    return builder.trajectory(layout=layout, root=root, ordering=ordering, warnings=warnings,
                              framework=framework, granularity=granularity)


class TrajectoryBuilder:
    """The table's columns, grown a snapshot at a time: a live view adds the records that arrived
    since its last refresh instead of rebuilding the rows of every earlier one."""

    def __init__(self) -> None:
        self.columns: dict[str, list] = {name: [] for name in COLUMNS}
        self.metas: list[SnapshotMeta] = []
        self.notes: list[str] = []  # parameters that appear or vanish
        self._prev_norms: dict[str, float] = {}
        self._prev_names: set[str] | None = None
        self._described: dict[tuple[str, tuple[int, ...]], tuple[str, str, str]] = {}
        self.rows: list[Mapping[str, Any]] = []  # each snapshot's per-row spreads

    def add(self, stats: Iterable[SnapshotStats]) -> None:
        """Append snapshots that follow the ones added so far, in time order."""
        for snap in stats:
            index = len(self.metas)
            self.metas.append(snap.meta)
            self.rows.append(snap.rows)
            names = set(snap.params)
            if self._prev_names is not None:
                appeared, vanished = sorted(names - self._prev_names), sorted(self._prev_names - names)
                where = f"snapshot {index} ({snap.meta.path})"
                if appeared:
                    self.notes.append(f"{len(appeared)} parameter(s) appear at {where}: {_preview(appeared)}")
                if vanished:
                    self.notes.append(f"{len(vanished)} parameter(s) vanish at {where}: {_preview(vanished)}")
            self._prev_names = names
            self._prev_norms = _add_snapshot(self.columns, index, snap, self._prev_norms, self._described)

    def trajectory(self, *, layout: str = "unknown", root: str = "", ordering: str = "unknown",
                   warnings: Iterable[str] = (), framework: str | None = None,
                   granularity: str = "tensor") -> Trajectory:
        """The trajectory of the snapshots added so far (the table is a copy: adding more later
        leaves it as it is)."""
        columns = self.columns
        table = with_column_types(
            pd.DataFrame(columns if columns["param"] else None, columns=list(COLUMNS))
        )
        return Trajectory(table=table, snapshots=list(self.metas), layout=layout, root=root,
                          ordering=ordering, warnings=[*warnings, *self.notes], framework=framework,
                          granularity=granularity,
                          rows=list(self.rows) if granularity == "row" else [])


def with_column_types(table: pd.DataFrame) -> pd.DataFrame:
    """The schema's column types (module docstring) on a freshly built table, in place."""
    if not table.empty:
        table["step"] = table["step"].astype("Int64")
        table["epoch"] = table["epoch"].astype("float64")
        table["numel"] = table["numel"].astype("int64")
        table["nonfinite"] = table["nonfinite"].astype("int64")
        for col in ("norm", "norm_sq", "dot_prev", "delta_norm", "angle_rad"):
            table[col] = table[col].astype(np.float64)
    return table


def _add_snapshot(
    columns: dict[str, list],
    index: int,
    snap: SnapshotStats,
    prev_norms: dict[str, float],
    described: dict[tuple[str, tuple[int, ...]], tuple[str, str, str]],
) -> dict[str, float]:
    """Append one snapshot's rows to `columns`; return its norms by parameter (for the next
    snapshot's angles). `described` caches layer, kind and shape text per (param, shape)."""
    params = list(snap.params)

    def column(field: str) -> list[Any]:  # columns as the engine keeps them (`ParamTable`)
        return param_column(snap.params, field)

    count = len(params)
    meta = snap.meta
    norm_sq = column("norm_sq")
    norms = [math.sqrt(x) if x >= 0 else math.nan for x in norm_sq]
    dot_prev = column("dot_prev")
    diff_sq = column("diff_sq")
    angles = [
        angle_between(prev, norm, dot, diff)
        if prev is not None and (dot is not None or diff is not None)
        else math.nan
        for prev, norm, dot, diff in zip(map(prev_norms.get, params), norms, dot_prev, diff_sq)
    ]
    update_sq = column("update_norm_sq")
    update_angles = [
        angle_between(math.sqrt(max(before, 0.0)), norm, None, update)
        if before is not None and update is not None
        else math.nan
        for before, norm, update in zip(column("norm_sq_before"), norms, update_sq)
    ]
    shapes = snap.shapes
    texts = []
    for param in params:
        shape = tuple(shapes.get(param, ()))
        text = described.get((param, shape))
        if text is None:
            text = described[(param, shape)] = (
                layer_of(param), kind_of(param, shape), "x".join(map(str, shape))
            )
        texts.append(text)
    groups = _group_of(meta)
    in_group = [groups.get(param) for param in params]
    betas = [g.betas if g is not None and g.betas is not None else (None, None) for g in in_group]
    added = {
        "snapshot": [index] * count,
        "step": [meta.step] * count,
        "epoch": [meta.epoch] * count,
        "path": [meta.path] * count,
        "param": params,
        "layer": [t[0] for t in texts],
        "kind": [t[1] for t in texts],
        "shape": [t[2] for t in texts],
        "numel": column("numel"),
        "dtype": [snap.dtypes.get(param, "") for param in params],
        "norm": norms,
        "norm_sq": norm_sq,
        "dot_prev": _floats(dot_prev),
        "delta_norm": _roots(diff_sq),
        "angle_rad": angles,
        "nonfinite": column("nonfinite"),
        "buf_dot": _floats(column("buf_dot")),
        "buf_norm": _roots(column("buf_norm_sq")),
        "exp_avg_sq_sum": _floats(column("exp_avg_sq_sum")),
        "grad_norm": _roots(column("grad_norm_sq")),
        "grad_dot": _floats(column("grad_dot")),
        "update_norm": _roots(update_sq),
        "update_angle_rad": update_angles,
        "optimizer": [meta.optimizer or ""] * count,
        "lr": _floats([g.lr if g else None for g in in_group]),
        "weight_decay": _floats([g.weight_decay if g else None for g in in_group]),
        "momentum": _floats([g.momentum if g else None for g in in_group]),
        "beta1": _floats([b[0] for b in betas]),
        "beta2": _floats([b[1] for b in betas]),
    }
    for name, values in added.items():
        columns[name].extend(values)
    return dict(zip(params, norms))


def _floats(values: list[float | None]) -> list[float]:
    return [math.nan if x is None else float(x) for x in values]


def _roots(values: list[float | None]) -> list[float]:
    return [math.nan if x is None else math.sqrt(x) for x in values]


def _preview(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … (+{len(names) - limit})" if len(names) > limit else "")
