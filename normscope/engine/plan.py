"""Which tensors are read together: buckets of parameter pieces, bounded in bytes.

The engine walks the run parameter-major: for one bucket of parameter names it reads every snapshot
in time order, holding only the previous snapshot's bucket for the dot products, then moves on to
the next bucket. Every tensor is read once, and memory is bounded by the bucket, not by the model
or the run. A parameter larger than a bucket is split into pieces of whole rows (first dimension),
read with the ref's `load_rows(start, stop)`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from normscope.errors import BadInputError
from normscope.snapshot import Snapshot

# Optimizer state keys the engine reduces, in the order it prefers for `buf`.
BUF_KEYS = ("momentum_buffer", "exp_avg")
SQ_KEY = "exp_avg_sq"

_ITEMSIZE = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1,
}  # fmt: skip


@dataclass(frozen=True)
class Piece:
    """Rows `start:stop` of parameter `name` (`whole` when the parameter is read in one go)."""

    name: str
    start: int = 0
    stop: int | None = None

    @property
    def whole(self) -> bool:
        return self.stop is None


@dataclass(frozen=True)
class Plan:
    buckets: tuple[tuple[Piece, ...], ...]
    sizes: tuple[
        tuple[int, ...], ...
    ]  # sizes[b][t]: bytes bucket b reads from snapshot t
    total_bytes: (
        int  # everything the run will read: weights and reduced optimizer state
    )


def itemsize(dtype: str, *, where: str = "") -> int:
    try:
        return _ITEMSIZE[dtype]
    except KeyError:
        raise BadInputError(
            f"unsupported tensor dtype {dtype!r}{where}; normscope reduces floating-point tensors"
        ) from None


def shape_of(handle: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in handle.shape)


def dtype_of(handle: Any) -> str:
    dtype = handle.dtype
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")


def tensor_bytes(handle: Any) -> int:
    return math.prod(shape_of(handle)) * itemsize(
        dtype_of(handle), where=f" for {getattr(handle, 'name', '?')}"
    )


def optimizer_handles(
    snapshot: Snapshot, name: str, *, with_state: bool = True
) -> dict[str, Any]:
    """The optimizer tensors the engine reduces for `name`: {'buf': ..., 'sq': ...} when present
    with the parameter's shape (factored or scalar states of other optimizers are ignored)."""
    if not with_state:
        return {}
    state: Mapping[str, Any] = snapshot.optimizer_state.get(name, {}) or {}
    shape = shape_of(snapshot.tensors[name])
    found: dict[str, Any] = {}
    for key in BUF_KEYS:
        handle = state.get(key)
        if (
            handle is not None
            and hasattr(handle, "shape")
            and shape_of(handle) == shape
        ):
            found["buf"] = handle
            break
    handle = state.get(SQ_KEY)
    if handle is not None and hasattr(handle, "shape") and shape_of(handle) == shape:
        found["sq"] = handle
    return found


def param_bytes(snapshot: Snapshot, name: str, *, with_state: bool = True) -> int:
    handles = [
        snapshot.tensors[name],
        *optimizer_handles(snapshot, name, with_state=with_state).values(),
    ]
    return sum(tensor_bytes(h) for h in handles)


def _row_bytes(snapshot: Snapshot, name: str, with_state: bool) -> int:
    shape = shape_of(snapshot.tensors[name])
    rows = shape[0] if shape else 1
    return -(-param_bytes(snapshot, name, with_state=with_state) // max(rows, 1))


def _pieces(
    name: str,
    snaps: Sequence[tuple[int, Snapshot]],
    budget: int,
    with_state: Sequence[bool],
) -> list[Piece]:
    """One whole piece if the parameter fits the budget in every snapshot, else row slices."""
    largest = max(param_bytes(s, name, with_state=with_state[i]) for i, s in snaps)
    if largest <= budget:
        return [Piece(name)]
    shapes = [shape_of(s.tensors[name]) for _, s in snaps]
    if any(len(shape) == 0 for shape in shapes):
        return [Piece(name)]
    row_bytes = max(_row_bytes(s, name, with_state[i]) for i, s in snaps)
    rows_per_piece = max(1, budget // max(row_bytes, 1))
    max_rows = max(shape[0] for shape in shapes)
    return [
        Piece(name, start, min(start + rows_per_piece, max_rows))
        for start in range(0, max_rows, rows_per_piece)
    ]


def piece_bytes(snapshot: Snapshot, piece: Piece, *, with_state: bool = True) -> int:
    """Bytes this piece reads from `snapshot` (0 when the snapshot lacks it or is too short)."""
    if piece.name not in snapshot.tensors:
        return 0
    total = param_bytes(snapshot, piece.name, with_state=with_state)
    if piece.whole:
        return total
    rows = shape_of(snapshot.tensors[piece.name])[0]
    present = max(0, min(piece.stop, rows) - piece.start)
    return total * present // max(rows, 1)


def plan_buckets(
    snapshots: Sequence[Snapshot],
    budget: int,
    *,
    names: Iterable[str] | None = None,
    state_from: int = 0,
) -> Plan:
    """Buckets of pieces, each at most `budget` bytes in any one snapshot (a single row may exceed it).

    Parameters are taken in first-appearance order (file order), packed greedily. `state_from`:
    snapshots before it are read only as the previous snapshot of the next one (no optimizer state).
    """
    if budget < 1:
        raise BadInputError(f"bucket size must be positive, got {budget} bytes")
    wanted = None if names is None else set(names)
    order: dict[str, list[tuple[int, Snapshot]]] = {}
    for i, snap in enumerate(snapshots):
        for name in snap.tensors:
            if wanted is None or name in wanted:
                order.setdefault(name, []).append((i, snap))
    with_state = [i >= state_from for i in range(len(snapshots))]

    buckets: list[tuple[Piece, ...]] = []
    bucket_sizes: list[tuple[int, ...]] = []
    current: list[Piece] = []
    current_bytes = [0] * len(snapshots)
    for name, snaps in order.items():
        for piece in _pieces(name, snaps, budget, with_state):
            sizes = [0] * len(snapshots)
            for i, snap in snaps:
                sizes[i] = piece_bytes(snap, piece, with_state=with_state[i])
            if current and any(c + s > budget for c, s in zip(current_bytes, sizes)):
                buckets.append(tuple(current))
                bucket_sizes.append(tuple(current_bytes))
                current, current_bytes = [], [0] * len(snapshots)
            current.append(piece)
            current_bytes = [c + s for c, s in zip(current_bytes, sizes)]
    if current:
        buckets.append(tuple(current))
        bucket_sizes.append(tuple(current_bytes))
    return Plan(tuple(buckets), tuple(bucket_sizes), sum(map(sum, bucket_sizes)))
