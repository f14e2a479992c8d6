"""The seam between sources and the engine: what one saved (or logged) moment of a run looks like.

Data flows one way:

    sources  ──►  Run[Snapshot]  ──►  engine  ──►  SnapshotStats  ──►  trajectory table
    live logs ───────────────────────────────────►  SnapshotStats  ──┘

A `Snapshot` holds *lazy* tensor handles; nothing is read until the engine asks. Live logs already
carry reduced numbers, so their readers produce `SnapshotStats` directly and skip the engine.

This module must stay importable without torch (the CLI's start-up path imports it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard, runtime_checkable

import numpy as np

from normscope.file_stamps import FileSpan, FileStamp

if TYPE_CHECKING:  # pragma: no cover
    import torch

# How the time order of snapshots was decided, best evidence first. Reported to the user.
ORDER_EMBEDDED = "embedded"  # step/epoch stored inside the checkpoint
ORDER_TRAINER_STATE = "trainer_state"  # HF trainer_state.json and the like
ORDER_FILENAME = "filename"  # checkpoint-N, epoch=E-step=S, step_N, global_stepN, natural sort
ORDER_MTIME = "mtime"  # file modification time, the last resort
ORDER_LOG = "log"  # a live log's own step counter
ORDER_SOURCES = (ORDER_EMBEDDED, ORDER_TRAINER_STATE, ORDER_FILENAME, ORDER_MTIME, ORDER_LOG)


@runtime_checkable
class TensorRef(Protocol):
    """A lazy handle on one tensor in a checkpoint. `load()` reads it (CPU, possibly mmap-backed).

    `span` says where the tensor's bytes lie in its file (`FileSpan`: path, offset, nbytes; the
    elements in C order, of the ref's shape and dtype), or is None where the ref cannot say.
    Where no guarded kernel reads a bucket (the fused kernel off, row sums, CUDA staging), the
    engine reads a ref with a span by read calls into memory of its own rather than touching a
    mapping of the file: a file cut short meanwhile is then a short read, not a SIGBUS
    (`file_reads`).

    A ref may offer more, each declared by a protocol of its own: rows without the whole tensor
    (`RowsTensorRef`), the tensor already in hand (`HeldTensorRef`), or its elements' address in
    memory (`AddressedTensorRef`). The engine asks `reads_rows`, `holds_tensor` and `has_address`
    which a ref offers. An offer is a property of the ref's class: every instance has the members
    (None where that instance has nothing to give), and the engine decides once per class.
    """

    # read-only: a frozen dataclass or a NamedTuple is a ref too
    @property
    def name(self) -> str: ...

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> str: ...  # torch dtype name without the prefix: "float32", "bfloat16", ...

    @property
    def span(self) -> FileSpan | None: ...

    def load(self) -> torch.Tensor: ...


@runtime_checkable
class RowsTensorRef(TensorRef, Protocol):
    """A ref that reads rows `start:stop` of the first dimension without the rest, so the engine
    can cut a tensor larger than its bucket into row slices (safetensors reads only those bytes).
    """

    def load_rows(self, start: int, stop: int) -> torch.Tensor: ...


@runtime_checkable
class HeldTensorRef(TensorRef, Protocol):
    """A ref whose tensor is in hand already (a mapped tensor from `torch.load`).

    `held` is the very tensor `load()` returns, of the ref's shape and dtype, or None where the
    ref holds none: where the fused kernel reduces the bucket, the engine takes it without the
    call and its checks (tens of thousands of refs on a ResNet-shaped run).
    """

    @property
    def held(self) -> torch.Tensor | None: ...


@runtime_checkable
class AddressedTensorRef(TensorRef, Protocol):
    """A ref whose elements lie contiguous in memory it keeps mapped, checked in bounds.

    `address` is the first byte (an int), or None where the ref has no such memory; `numel` says
    how many elements lie there. The CPU kernel reads them at the address and no tensor is built.
    """

    @property
    def numel(self) -> int: ...

    @property
    def address(self) -> int | None: ...


# per protocol, by class of ref: whether the class offers it (a handful of classes per run)
_ROWS: dict[type, bool] = {}
_HELD: dict[type, bool] = {}
_ADDRESSED: dict[type, bool] = {}


def _offers(ref: object, capability: type, known: dict[type, bool]) -> bool:
    """Whether `ref`'s class has `capability`'s members, decided on its first instance and kept
    in `known` (a protocol check costs microseconds, and the engine asks per tensor)."""
    offered = known[type(ref)] = isinstance(ref, capability)
    return offered


def reads_rows(ref: object) -> TypeGuard[RowsTensorRef]:
    """Whether `ref` reads row slices (`RowsTensorRef`).

    Args:
        ref: a tensor ref of any class.

    Returns:
        True where its class has `load_rows`.
    """
    offered = _ROWS.get(type(ref))
    return _offers(ref, RowsTensorRef, _ROWS) if offered is None else offered


def holds_tensor(ref: object) -> TypeGuard[HeldTensorRef]:
    """Whether `ref` may hold its tensor (`HeldTensorRef`); its `held` can still be None.

    Args:
        ref: a tensor ref of any class.

    Returns:
        True where its class has `held`.
    """
    offered = _HELD.get(type(ref))
    return _offers(ref, HeldTensorRef, _HELD) if offered is None else offered


def has_address(ref: object) -> TypeGuard[AddressedTensorRef]:
    """Whether `ref` may be read at an address (`AddressedTensorRef`); its `address` can still
    be None.

    Args:
        ref: a tensor ref of any class.

    Returns:
        True where its class has `address` and `numel`.
    """
    offered = _ADDRESSED.get(type(ref))
    return _offers(ref, AddressedTensorRef, _ADDRESSED) if offered is None else offered


@dataclass(frozen=True)
class ParamGroup:
    """Hyper-parameters of one optimizer param group, and which parameters (by clean name) it holds."""

    params: tuple[str, ...]
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float | None = None  # SGD momentum (mu)
    dampening: float | None = None
    nesterov: bool | None = None
    betas: tuple[float, float] | None = None  # Adam-family (beta1, beta2)
    eps: float | None = None
    decoupled_weight_decay: bool | None = None  # True for AdamW-style decay


@dataclass(frozen=True)
class SnapshotMeta:
    """Where a snapshot sits in time and how we know, plus the optimizer settings in force."""

    path: str
    step: int | None
    epoch: float | None
    order_source: str  # one of ORDER_SOURCES
    optimizer: str | None = None  # "SGD", "AdamW", "Adam", ... when it can be told
    param_groups: tuple[ParamGroup, ...] = ()
    hyperparams_source: str | None = None  # e.g. "optimizer.pt param_groups", "--lr flag"
    extra: Mapping[str, Any] = field(default_factory=dict)  # format-specific facts worth reporting


@dataclass
class Snapshot:
    """One checkpoint: metadata, lazy model tensors and (optional) lazy optimizer state per parameter.

    `tensors` holds floating-point tensors only, keyed by cleaned parameter name (`module.`,
    `_orig_mod.`, Lightning `model.` prefixes removed). `optimizer_state[name]` maps state keys
    (`momentum_buffer`, `exp_avg`, `exp_avg_sq`) to lazy handles and `step` to a float.
    """

    meta: SnapshotMeta
    tensors: Mapping[str, TensorRef]
    optimizer_state: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # the files its tensors are read from, as they were when opened (`file_stamps`)
    files: tuple[FileStamp, ...] = ()


@dataclass(frozen=True)
class ParamStats:
    """Reduced numbers for one parameter in one snapshot, all accumulated in float64.

    `dot_prev` and `diff_sq` are against the same parameter in the previous snapshot (None for the
    first snapshot, or when the parameter is new or changed shape). Optimizer- and log-derived
    fields are None when the source does not have them.
    """

    numel: int
    norm_sq: float
    nonfinite: int = 0
    dot_prev: float | None = None
    diff_sq: float | None = None
    # optimizer state (checkpoints): <w, buf> and |buf|^2, buf = momentum_buffer (SGD) or exp_avg (Adam)
    buf_dot: float | None = None
    buf_norm_sq: float | None = None
    exp_avg_sq_sum: float | None = None  # Adam: sum of exp_avg_sq (≈ E|g|^2 before bias correction)
    # live logs: gradient and the step's update
    grad_norm_sq: float | None = None
    grad_dot: float | None = None  # <w, g>
    update_norm_sq: float | None = None  # |Δw|^2 of the logged step
    norm_sq_before: float | None = None  # |w|^2 just before the logged step (norm_sq is after it)


# ParamStats's fields in order, and the defaults of those that have one (a table may lack them)
_PARAM_FIELDS = tuple(f.name for f in fields(ParamStats))
_DEFAULT = {f.name: f.default for f in fields(ParamStats) if f.default is not MISSING}


class ParamTable(Mapping[str, ParamStats]):
    """One snapshot's `ParamStats` by name, kept as columns (the engine's output): a ResNet-shaped
    run has 34k (parameter, snapshot) pairs, and an object each cost more than the reduction's
    own bookkeeping. A `ParamStats` is made when one is asked for; `column()` (and
    `param_column`) give a field for every parameter without making any.

    `columns` maps `ParamStats` field names to lists in `names` order; absent fields are None
    for every parameter."""

    __slots__ = ("_columns", "_index", "_names")

    def __init__(self, names: Sequence[str], columns: Mapping[str, Sequence[Any]]) -> None:
        required = set(_PARAM_FIELDS) - _DEFAULT.keys()  # numel and norm_sq
        if not required <= set(columns) <= set(_PARAM_FIELDS):
            raise ValueError(f"ParamTable columns must be ParamStats fields including "
                             f"{sorted(required)}; got {sorted(columns)}")  # fmt: skip
        self._names = list(names)
        if any(len(values) != len(self._names) for values in columns.values()):
            raise ValueError("every ParamTable column needs one value per name")
        self._columns = {field: list(values) for field, values in columns.items()}
        self._index: dict[str, int] | None = None

    def column(self, name: str) -> list[Any]:
        """Field `name` of every parameter, in order (its default where the table lacks it)."""
        if name not in _PARAM_FIELDS:
            raise KeyError(name)
        values = self._columns.get(name)
        return list(values) if values is not None else [_DEFAULT[name]] * len(self._names)

    def float_column(self, name: str) -> np.ndarray:
        """Field `name` of every parameter as float64, None as NaN (a column the table lacks, or
        holds only None in, without a Python float per parameter).

        Args:
            name: a `ParamStats` field.

        Returns:
            One value per parameter, in order.

        Raises:
            KeyError: `name` is not a `ParamStats` field.
        """
        if name not in _PARAM_FIELDS:
            raise KeyError(name)
        values = self._columns.get(name)
        if values is None:
            default = _DEFAULT[name]
            return np.full(len(self._names), math.nan if default is None else float(default))
        if values.count(None) == len(values):
            return np.full(len(values), math.nan)
        return np.array(values, dtype=float)

    def _positions(self) -> dict[str, int]:
        if self._index is None:  # made on the first lookup by name; columns need none
            self._index = {n: i for i, n in enumerate(self._names)}
        return self._index

    def __getitem__(self, name: str) -> ParamStats:
        i = self._positions()[name]
        columns = self._columns
        stats = object.__new__(ParamStats)
        object.__setattr__(stats, "__dict__", {
            key: columns[key][i] if key in columns else _DEFAULT[key] for key in _PARAM_FIELDS
        })  # fmt: skip
        return stats

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._positions()

    def __repr__(self) -> str:
        return f"ParamTable({len(self._names)} parameters)"

    def __reduce__(self) -> tuple[Any, ...]:  # pickled as its columns (Dask sends results)
        return (ParamTable, (self._names, self._columns))


def param_float_columns(params: Mapping[str, ParamStats], fields: Sequence[str]) -> dict[str, np.ndarray]:
    """`param_column` of each of `fields` as float64 arrays, None as NaN.

    Args:
        params: one snapshot's stats by parameter (a `ParamTable`: its columns as they are; any
            other mapping: its values read in one pass).
        fields: `ParamStats` fields with float (or None) values.

    Returns:
        By field, one value per parameter, in iteration order.
    """
    if isinstance(params, ParamTable):
        return {name: params.float_column(name) for name in fields}
    values = np.array([[getattr(ps, name) for name in fields] for ps in params.values()], dtype=float)
    values = values.reshape(len(params), len(fields))
    return {name: values[:, k] for k, name in enumerate(fields)}


def param_column(params: Mapping[str, ParamStats], field: str) -> list[Any]:
    """`field` of every parameter of `params`, in iteration order: a table's column as it is,
    or read off each `ParamStats` of another mapping."""
    if isinstance(params, ParamTable):
        return params.column(field)
    return [getattr(ps, field) for ps in params.values()]


@dataclass
class SnapshotStats:
    """The engine's (or a live log's) output for one snapshot."""

    meta: SnapshotMeta
    params: Mapping[str, ParamStats]
    shapes: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, str]
    # per-row sums against the previous snapshot (`normscope.row_stats.RowSums`), by parameter; only with
    # the engine's row granularity, else empty
    rows: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    """An ordered run: what a source made of the path the user gave."""

    root: str
    layout: str  # e.g. "torch", "safetensors", "hf-trainer", "lightning", "dcp", "jsonl", "tensorboard"
    snapshots: Sequence[Snapshot]
    ordering: str  # the ORDER_* used for the whole run (the weakest one any snapshot needed)
    warnings: list[str] = field(default_factory=list)
    # Live logs carry reduced numbers already: their sources fill `stats` (in time order) and leave
    # `snapshots` empty, and the engine is skipped.
    stats: Sequence[SnapshotStats] | None = None
    framework: str | None = None  # the saver recognised (e.g. "timm", "DeepSpeed ZeRO-2"), if any
