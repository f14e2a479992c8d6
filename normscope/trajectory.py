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

from normscope.angles import angle_between  # noqa: F401 (documented here: normscope.trajectory.angle_between)
from normscope.snapshot import ParamGroup, SnapshotMeta, SnapshotStats, param_column, param_float_columns

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
    # (`normscope.row_stats.RowSpread`); "tensor": `rows` is empty
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


_STRING_COLUMNS = ("path", "param", "layer", "kind", "shape", "dtype", "optimizer")
_INT_COLUMNS = ("snapshot", "numel", "nonfinite")
_FLOAT_COLUMNS = tuple(c for c in COLUMNS if c not in (*_STRING_COLUMNS, *_INT_COLUMNS, "step"))


class TrajectoryBuilder:
    """The table's columns, grown a snapshot at a time: a live view adds the records that arrived
    since its last refresh instead of rebuilding the rows of every earlier one.

    Each snapshot adds a block of columns made with array operations: numbers as numpy arrays,
    text as codes into one list of distinct strings per column (a run repeats its parameter names
    in every snapshot)."""

    def __init__(self) -> None:
        self.metas: list[SnapshotMeta] = []
        self.notes: list[str] = []  # parameters that appear or vanish
        self.rows: list[Mapping[str, Any]] = []  # each snapshot's per-row spreads
        self._blocks: list[_Block] = []
        self._strings = {name: _Strings() for name in _STRING_COLUMNS}
        self._prev: _Block | None = None
        self._prev_names: set[str] | None = None
        self._described: dict[tuple[str, tuple[int, ...]], tuple[str, str, str]] = {}

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
            self._prev = _snapshot_block(index, snap, self._prev, self._strings, self._described)
            self._blocks.append(self._prev)

    @property
    def snapshot_count(self) -> int:
        """How many snapshots were added so far."""
        return len(self._blocks)

    def table(self, *, since: int = 0) -> pd.DataFrame:
        """The table of the snapshots added after the first `since` (all of them by default), with
        the schema's column types: a live view appends only the new snapshots' rows."""
        return with_column_types(_table_of(self._blocks[since:], self._strings))

    def trajectory(self, *, layout: str = "unknown", root: str = "", ordering: str = "unknown",
                   warnings: Iterable[str] = (), framework: str | None = None,
                   granularity: str = "tensor") -> Trajectory:
        """The trajectory of the snapshots added so far (the table is a copy: adding more later
        leaves it as it is)."""
        return Trajectory(table=self.table(), snapshots=list(self.metas), layout=layout, root=root,
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


class _Strings:
    """One text column's distinct values, in order of first appearance, and their codes."""

    __slots__ = ("codes_of", "values")

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.codes_of: dict[Any, int] = {}

    def codes(self, texts: list[Any]) -> np.ndarray:
        codes_of, values = self.codes_of, self.values
        out = []
        for text in texts:
            code = codes_of.get(text)
            if code is None:
                code = codes_of[text] = len(values)
                values.append(text)
            out.append(code)
        return np.array(out, dtype=np.int64)


@dataclass
class _Block:
    """One snapshot's rows, column by column, and what the next snapshot's block can reuse."""

    count: int
    numbers: dict[str, np.ndarray]  # float and int columns
    # what the derived columns (`_DERIVED`) are made of: made for the whole table at once
    sources: dict[str, np.ndarray]
    codes: dict[str, np.ndarray]  # text columns, as codes into `_Strings`
    step: Any
    params: list[str]
    norms: np.ndarray
    shapes: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, str]
    groups: tuple[ParamGroup, ...]


def _snapshot_block(index: int, snap: SnapshotStats, prev: _Block | None, strings: dict[str, _Strings],
                    described: dict[tuple[str, tuple[int, ...]], tuple[str, str, str]]) -> _Block:
    """One snapshot's rows as columns (the per-row formulas of the module docstring, each over all
    parameters at once). What depends only on the parameter names, shapes, dtypes and groups is
    taken from `prev` when those are the same as in the previous snapshot."""
    params = list(snap.params)
    count = len(params)
    meta = snap.meta

    column = param_float_columns(snap.params, _FLOAT_FIELDS).__getitem__  # None as NaN
    norm_sq = column("norm_sq")
    with np.errstate(invalid="ignore"):
        norms = np.where(norm_sq >= 0, np.sqrt(norm_sq), math.nan)
    same_params = prev is not None and prev.params == params
    if same_params:
        prev_norms = prev.norms
    elif prev is not None:
        by_name = dict(zip(prev.params, prev.norms.tolist()))
        prev_norms = np.array([by_name.get(p, math.nan) for p in params], dtype=float)
    else:
        prev_norms = np.full(count, math.nan)
    numbers = {
        "snapshot": np.full(count, index, dtype=np.int64),
        "epoch": np.full(count, math.nan if meta.epoch is None else meta.epoch, dtype=float),
        "numel": np.array(param_column(snap.params, "numel")),
        "norm": norms,
        "norm_sq": norm_sq,
        "dot_prev": column("dot_prev"),
        "nonfinite": np.array(param_column(snap.params, "nonfinite")),
        "buf_dot": column("buf_dot"),
        "exp_avg_sq_sum": column("exp_avg_sq_sum"),
        "grad_dot": column("grad_dot"),
    }
    sources = {name: column(name) for name in _SOURCE_FIELDS}
    sources["prev_norm"] = prev_norms
    reuse = same_params and prev.shapes == snap.shapes and prev.dtypes == snap.dtypes
    codes = {
        "path": np.full(count, strings["path"].codes([meta.path])[0], dtype=np.int64),
        "param": prev.codes["param"] if same_params else strings["param"].codes(params),
        "optimizer": np.full(count, strings["optimizer"].codes([meta.optimizer or ""])[0], dtype=np.int64),
    }
    if reuse:
        codes.update({name: prev.codes[name] for name in ("layer", "kind", "shape", "dtype")})
    else:
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
        for k, name in enumerate(("layer", "kind", "shape")):
            codes[name] = strings[name].codes([t[k] for t in texts])
        codes["dtype"] = strings["dtype"].codes([snap.dtypes.get(param, "") for param in params])
    if same_params and prev.groups == meta.param_groups:
        numbers.update({name: prev.numbers[name] for name in ("lr", "weight_decay", "momentum", "beta1", "beta2")})
    else:
        groups = _group_of(meta)
        in_group = [groups.get(param) for param in params]
        betas = [g.betas if g is not None and g.betas is not None else (None, None) for g in in_group]
        numbers.update({
            "lr": _floats([g.lr if g else None for g in in_group]),
            "weight_decay": _floats([g.weight_decay if g else None for g in in_group]),
            "momentum": _floats([g.momentum if g else None for g in in_group]),
            "beta1": _floats([b[0] for b in betas]),
            "beta2": _floats([b[1] for b in betas]),
        })
    return _Block(count=count, numbers=numbers, sources=sources, codes=codes, step=meta.step, params=params,
                  norms=norms, shapes=snap.shapes, dtypes=snap.dtypes, groups=meta.param_groups)


# The float `ParamStats` fields a block reads, and those of them kept only to derive other columns
_FLOAT_FIELDS = ("norm_sq", "dot_prev", "diff_sq", "buf_dot", "buf_norm_sq", "exp_avg_sq_sum", "grad_norm_sq",
                 "grad_dot", "update_norm_sq", "norm_sq_before")
_SOURCE_FIELDS = ("diff_sq", "buf_norm_sq", "grad_norm_sq", "update_norm_sq", "norm_sq_before")
# Columns computed from the blocks' `sources` over the whole table at once: element by element, so
# the same numbers as a block at a time, without a dozen array calls per snapshot (a tracker log
# holds a snapshot per logged step)
_DERIVED = ("delta_norm", "angle_rad", "buf_norm", "grad_norm", "update_norm", "update_angle_rad")


def _derived_columns(numbers: dict[str, np.ndarray], sources: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The columns the module docstring's formulas derive from the measured ones."""
    norms, before, update_sq = numbers["norm"], sources["norm_sq_before"], sources["update_norm_sq"]
    return {
        "delta_norm": _roots(sources["diff_sq"]),
        "angle_rad": angles_between(sources["prev_norm"], norms, numbers["dot_prev"], sources["diff_sq"]),
        "buf_norm": _roots(sources["buf_norm_sq"]),
        "grad_norm": _roots(sources["grad_norm_sq"]),
        "update_norm": _roots(update_sq),
        "update_angle_rad": angles_between(np.sqrt(np.where(0.0 > before, 0.0, before)), norms,
                                           np.full(len(norms), math.nan), update_sq),
    }


def _table_of(blocks: list[_Block], strings: dict[str, _Strings]) -> pd.DataFrame:
    """The DataFrame of the blocks' rows, in the schema's column order."""
    if not any(block.count for block in blocks):
        return pd.DataFrame(None, columns=list(COLUMNS))
    data: dict[str, Any] = {}
    for name in (*_INT_COLUMNS, *_FLOAT_COLUMNS):
        if name not in _DERIVED:
            data[name] = np.concatenate([block.numbers[name] for block in blocks])
    sources = {name: np.concatenate([block.sources[name] for block in blocks]) for name in blocks[0].sources}
    data.update(_derived_columns(data, sources))
    data["step"] = [step for block in blocks for step in [block.step] * block.count]
    for name in _STRING_COLUMNS:
        data[name] = _text_column(strings[name].values, np.concatenate([block.codes[name] for block in blocks]))
    return pd.DataFrame({name: data[name] for name in COLUMNS}, columns=list(COLUMNS))


_STR_DTYPE: Any = None  # the dtype pandas gives a column of str (found on first use)


def _text_column(values: list[Any], codes: np.ndarray) -> Any:
    """`[values[c] for c in codes]` as the column pandas makes of that list: through pyarrow's take
    where pandas keeps its text in pyarrow (no Python string per row), else as an object array."""
    global _STR_DTYPE
    if _STR_DTYPE is None:
        _STR_DTYPE = pd.Series(["text"]).dtype
    if getattr(_STR_DTYPE, "storage", None) == "pyarrow" and all(type(v) is str for v in values):
        import pyarrow as pa  # lazy: pandas keeps text in pyarrow here, so it is installed and loaded

        return pd.array(pa.array(values, type=pa.large_string()).take(pa.array(codes)), dtype=_STR_DTYPE)
    objects = np.empty(len(values), dtype=object)
    objects[:] = values
    return objects[codes]


# Python's square, arcsine and arccosine of each element (numpy's own can differ in the last bit)
_python_pow = np.frompyfunc(pow, 2, 1)
_python_asin = np.frompyfunc(math.asin, 1, 1)
_python_acos = np.frompyfunc(math.acos, 1, 1)


def angles_between(norm_a: np.ndarray, norm_b: np.ndarray, dot: np.ndarray, diff_sq: np.ndarray) -> np.ndarray:
    """`angle_between` of each element (NaN where a quantity is unknown), to the bit: the square,
    arcsine and arccosine of each element as Python takes them.

    Args:
        norm_a, norm_b: the two tensors' norms.
        dot: their inner products (NaN: not measured).
        diff_sq: their squared distances (NaN: not measured).

    Returns:
        The angles in radians, NaN where they cannot be told.
    """
    out = np.full(np.shape(norm_b), math.nan)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        valid = (norm_a > 0) & (norm_b > 0) & np.isfinite(norm_a) & np.isfinite(norm_b)
        chord = valid & np.isfinite(diff_sq)
        if chord.any():
            a, b = norm_a[chord], norm_b[chord]
            gap_sq = _python_pow(a - b, 2.0).astype(float)
            chord_sq = diff_sq[chord] - gap_sq
            chord_sq = np.where(0.0 > chord_sq, 0.0, chord_sq) / (a * b)
            half = np.sqrt(chord_sq) / 2.0
            half = np.where(half < 1.0, half, 1.0)
            out[chord] = 2.0 * _python_asin(half).astype(float)
        cosine = valid & ~chord & np.isfinite(dot)
        if cosine.any():
            ratio = dot[cosine] / (norm_a[cosine] * norm_b[cosine])
            ratio = np.where(ratio < 1.0, ratio, 1.0)
            ratio = np.where(ratio > -1.0, ratio, -1.0)
            out[cosine] = _python_acos(ratio).astype(float)
    return out


def _floats(values: list[float | None]) -> np.ndarray:
    return np.array([math.nan if x is None else float(x) for x in values], dtype=float)


def _roots(values: np.ndarray) -> np.ndarray:
    """The square root of each (NaN stays NaN); a negative one is an error, as `math.sqrt` has it."""
    if np.any(values < 0):
        raise ValueError("math domain error")
    return np.sqrt(values)


def _preview(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … (+{len(names) - limit})" if len(names) > limit else "")
