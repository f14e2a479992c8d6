"""The seam between sources and the engine: what one saved (or logged) moment of a run looks like.

Data flows one way:

    sources  ──►  Run[Snapshot]  ──►  engine  ──►  SnapshotStats  ──►  trajectory table
    live logs ───────────────────────────────────►  SnapshotStats  ──┘

A `Snapshot` holds *lazy* tensor handles; nothing is read until the engine asks. Live logs already
carry reduced numbers, so their readers produce `SnapshotStats` directly and skip the engine.

This module must stay importable without torch (the CLI's start-up path imports it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

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

    A ref whose tensor is in hand already (a mapped tensor from `torch.load`) may expose it as
    `held`, the very tensor `load()` returns, of the ref's shape and dtype: the engine then takes
    it without the call and its checks (tens of thousands of refs on a ResNet-shaped run).
    A ref whose elements lie contiguous in memory it keeps mapped, checked in bounds, may expose
    `address` (an int, the first byte; its `numel` then says how many): the CPU kernel reads
    them there and no tensor is built at all.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name without the prefix: "float32", "bfloat16", "float16", ...

    def load(self) -> torch.Tensor: ...


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

    @classmethod
    def from_sums(cls, numel: int, norm_sq: float, nonfinite: int, dot_prev: float | None,
                  diff_sq: float | None, buf_dot: float | None, buf_norm_sq: float | None,
                  exp_avg_sq_sum: float | None) -> ParamStats:  # fmt: skip
        """The engine's stats (checkpoint fields only), equal to `ParamStats(...)` with the same
        arguments. The engine makes one per (tensor, snapshot), 34k on a 1 GB ResNet-shaped run,
        and the frozen `__init__`'s per-field `object.__setattr__` is 1.4 of its 2 µs."""
        stats = object.__new__(cls)
        object.__setattr__(stats, "__dict__", {
            "numel": numel, "norm_sq": norm_sq, "nonfinite": nonfinite, "dot_prev": dot_prev,
            "diff_sq": diff_sq, "buf_dot": buf_dot, "buf_norm_sq": buf_norm_sq,
            "exp_avg_sq_sum": exp_avg_sq_sum, "grad_norm_sq": None, "grad_dot": None,
            "update_norm_sq": None, "norm_sq_before": None,
        })  # fmt: skip
        return stats


@dataclass
class SnapshotStats:
    """The engine's (or a live log's) output for one snapshot."""

    meta: SnapshotMeta
    params: Mapping[str, ParamStats]
    shapes: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, str]


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
