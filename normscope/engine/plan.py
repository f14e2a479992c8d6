"""Which tensors are read together: buckets of parameter pieces, bounded in bytes.

The engine walks the run parameter-major: for one bucket of parameter names it reads every snapshot
in time order, holding only the previous snapshot's bucket for the dot products, then moves on to
the next bucket. Every tensor is read once, and memory is bounded by the bucket, not by the model
or the run. A parameter larger than a bucket is split into pieces of whole rows (first dimension),
read with the ref's `load_rows(start, stop)`.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from types import MappingProxyType
from typing import Any, NamedTuple

from normscope.errors import BadInputError
from normscope.snapshot import Snapshot

# Optimizer state keys the engine reduces, in the order it prefers for `buf`.
BUF_KEYS = ("momentum_buffer", "exp_avg")
SQ_KEY = "exp_avg_sq"

_ITEMSIZE = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1,
}  # fmt: skip


class Piece(NamedTuple):
    """Rows `start:stop` of parameter `name` (`whole` when the parameter is read in one go).

    A NamedTuple, as `Entry`: a ResNet-shaped plan makes one per parameter, 8.4k a snapshot, and
    a frozen dataclass's __init__ costs several times more."""

    name: str
    start: int = 0
    stop: int | None = None

    @property
    def whole(self) -> bool:
        return self.stop is None


class Entry(NamedTuple):
    """What the engine needs to know about one parameter in one snapshot, looked up once.

    A NamedTuple, not a dataclass: the plan makes one per (snapshot, parameter), 84k on a 10 GB
    ResNet-shaped run, and a frozen dataclass's __init__ costs several times more."""

    shape: tuple[int, ...]
    dtype: str
    state: Mapping[str, Any]  # {'buf': handle, 'sq': handle}, the streams present
    nbytes: int  # weights + state
    numel: int  # of the weights


_NO_STATE: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class Plan:
    """`sizes[b][t]`: bytes bucket b reads from snapshot t; `entries[t][name]`: the planned
    parameters of snapshot t; `total_bytes`: everything the run reads (weights and state)."""

    buckets: tuple[tuple[Piece, ...], ...]
    sizes: tuple[tuple[int, ...], ...]
    entries: tuple[Mapping[str, Entry], ...]
    total_bytes: int


def itemsize(dtype: str, *, where: str = "") -> int:
    try:
        return _ITEMSIZE[dtype]
    except KeyError:
        raise BadInputError(
            f"unsupported tensor dtype {dtype!r}{where}; normscope reduces floating-point tensors"
        ) from None


def shape_of(handle: Any) -> tuple[int, ...]:
    return tuple(handle.shape)


def dtype_of(handle: Any) -> str:
    dtype = handle.dtype
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")


def tensor_bytes(handle: Any) -> int:
    return math.prod(shape_of(handle)) * itemsize(
        dtype_of(handle), where=f" for {getattr(handle, 'name', '?')}"
    )


def optimizer_handles(snapshot: Snapshot, name: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """The optimizer tensors the engine reduces for `name`: {'buf': ..., 'sq': ...} when present
    with the parameter's `shape` (factored or scalar states of other optimizers are ignored)."""
    state: Mapping[str, Any] = snapshot.optimizer_state.get(name, {}) or {}
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


def entry_of(snapshot: Snapshot, name: str, *, with_state: bool = True) -> Entry:
    return _entry(snapshot, name, snapshot.tensors[name], with_state and bool(snapshot.optimizer_state))


def _entry(snapshot: Snapshot, name: str, ref: Any, with_state: bool) -> Entry:
    shape = ref.shape
    if type(shape) is not tuple:
        shape = tuple(shape)
    dtype = ref.dtype
    if type(dtype) is not str:
        dtype = dtype_of(ref)
    size = _ITEMSIZE.get(dtype) or itemsize(dtype, where=f" for {name}")
    numel = math.prod(shape)
    if not with_state:
        return Entry(shape, dtype, _NO_STATE, numel * size, numel)
    state = optimizer_handles(snapshot, name, shape)
    nbytes = numel * size + sum(tensor_bytes(h) for h in state.values())
    return Entry(shape, dtype, state, nbytes, numel)


def _plain_entries(snapshot: Snapshot,
                   before: _Columns | None = None) -> tuple[dict[str, Entry], _Columns] | None:  # fmt: skip
    """`_entry` for every tensor of a snapshot without optimizer state, column by column (no call
    per tensor), and the columns they were made from; None where some ref needs `_entry`'s
    conversions or its error message. `before`: the previous snapshot's columns, whose entries
    are taken as they are where this snapshot has the same names, shapes and dtypes (a run of one
    model: the entries are tuples of those alone). Such a snapshot gets the previous one's
    mapping itself, not a copy: plan entries are read only, and `_uniform_buckets` and the
    accumulator then know the two snapshots alike by identity, without comparing 8.4k names."""
    refs = list(snapshot.tensors.values())
    shapes = list(map(_SHAPE, refs))
    dtypes = list(map(_DTYPE, refs))
    names = list(snapshot.tensors)
    if before is not None and before.shapes == shapes and before.dtypes == dtypes and before.names == names:
        return before.planned, before
    if set(map(type, shapes)) - {tuple} or not set(dtypes) <= _ITEMSIZE.keys():
        return None
    numels = list(map(math.prod, shapes))
    nbytes = map(operator.mul, numels, map(_ITEMSIZE.__getitem__, dtypes))
    entries = list(map(_new_entry, zip(shapes, dtypes, repeat(_NO_STATE), nbytes, numels)))
    planned = dict(zip(names, entries))
    return planned, _Columns(names, shapes, dtypes, planned)


class _Columns(NamedTuple):
    """A snapshot's planned tensors as columns: what the next snapshot's are compared with."""

    names: list[str]
    shapes: list[tuple[int, ...]]
    dtypes: list[str]
    planned: dict[str, Entry]


_new_entry = functools.partial(tuple.__new__, Entry)  # Entry(*fields) without its Python __new__
_new_piece = functools.partial(tuple.__new__, Piece)


class _Presence(NamedTuple):
    """A parameter in one snapshot: its shape and the bytes it reads there (weights + state)."""

    snapshot: int
    shape: tuple[int, ...]
    nbytes: int

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1


def _pieces(name: str, seen: Sequence[_Presence], budget: int,
            read_in_place: Callable[[str], bool] | None = None) -> list[Piece]:  # fmt: skip
    """One whole piece if the parameter fits the budget in every snapshot (or is read where it
    lies, see `plan_buckets`), else row slices."""
    if max(map(_NBYTES, seen)) <= budget or not all(map(_SHAPE, seen)):
        return [Piece(name)]
    if read_in_place is not None and read_in_place(name):
        return [Piece(name)]
    row_bytes = max(-(-p.nbytes // max(p.rows, 1)) for p in seen)
    rows_per_piece = max(1, budget // max(row_bytes, 1))
    max_rows = max(p.rows for p in seen)
    return [
        Piece(name, start, min(start + rows_per_piece, max_rows))
        for start in range(0, max_rows, rows_per_piece)
    ]


_NBYTES = operator.attrgetter("nbytes")
_SHAPE = operator.attrgetter("shape")
_DTYPE = operator.attrgetter("dtype")


def _piece_bytes(piece: Piece, p: _Presence) -> int:
    """Bytes `piece` reads where the parameter is `p` (0 when that snapshot has too few rows)."""
    if piece.whole:
        return p.nbytes
    present = max(0, min(piece.stop, p.rows) - piece.start)
    return p.nbytes * present // max(p.rows, 1)


def plan_buckets(
    snapshots: Sequence[Snapshot],
    budget: int,
    *,
    names: Iterable[str] | None = None,
    state_from: int = 0,
    read_in_place: Callable[[str], bool] | None = None,
) -> Plan:
    """Buckets of pieces, each at most `budget` bytes in any one snapshot (a single row may exceed
    it, and so may a parameter `read_in_place`).

    Args:
        snapshots: the run, in time order.
        budget: bytes of tensor data per bucket and snapshot.
        names: only these parameters (all where None).
        state_from: snapshots before it are read only as the previous snapshot of the next one
            (no optimizer state).
        read_in_place: asked for each parameter over the budget: True where the engine reads it
            where it lies in every snapshot (mapped file pages, no memory of its own), so it
            stays one piece instead of row slices read into memory.

    Returns:
        The buckets, parameters in first-appearance order (file order), packed greedily.

    Raises:
        BadInputError: a budget below one byte, or a dtype without a known size.
    """
    if budget < 1:
        raise BadInputError(f"bucket size must be positive, got {budget} bytes")
    wanted = None if names is None else set(names)
    entries: list[dict[str, Entry]] = []
    columns: _Columns | None = None
    for i, snap in enumerate(snapshots):
        with_state = i >= state_from and bool(snap.optimizer_state)
        plain = None if with_state or wanted is not None else _plain_entries(snap, columns)
        planned, columns = plain if plain is not None else (None, None)
        if planned is None:
            planned = {
                name: _entry(snap, name, ref, with_state)
                for name, ref in snap.tensors.items()
                if wanted is None or name in wanted
            }
        entries.append(planned)
    packed = _uniform_buckets(entries, budget)
    if packed is None:
        packed = _greedy_buckets(_presences(entries), budget, len(snapshots), read_in_place)
    buckets, bucket_sizes = packed
    return Plan(buckets, bucket_sizes, tuple(entries), sum(map(sum, bucket_sizes)))


def _presences(entries: Sequence[Mapping[str, Entry]]) -> dict[str, list[_Presence]]:
    """name -> (snapshot, shape, bytes) of each snapshot holding it, in first-appearance order."""
    seen: dict[str, list[_Presence]] = {}
    for i, planned in enumerate(entries):
        for name, entry in planned.items():
            presence = seen.get(name)
            if presence is None:
                seen[name] = [_Presence(i, entry.shape, entry.nbytes)]
            else:
                presence.append(_Presence(i, entry.shape, entry.nbytes))
    return seen


_Packed = tuple[tuple[tuple[Piece, ...], ...], tuple[tuple[int, ...], ...]]


def _greedy_buckets(seen: Mapping[str, Sequence[_Presence]], budget: int, snapshots: int,
                    read_in_place: Callable[[str], bool] | None = None) -> _Packed:  # fmt: skip
    """Pieces packed greedily in first-appearance order; (buckets, bytes per snapshot of each)."""
    buckets: list[tuple[Piece, ...]] = []
    bucket_sizes: list[tuple[int, ...]] = []
    current: list[Piece] = []
    current_bytes = [0] * snapshots
    for name, presence in seen.items():
        for piece in _pieces(name, presence, budget, read_in_place):
            if piece.stop is None:
                sizes = [(p.snapshot, p.nbytes) for p in presence]
            else:
                sizes = [(p.snapshot, _piece_bytes(piece, p)) for p in presence]
            if current and any(current_bytes[i] + n > budget for i, n in sizes):
                buckets.append(tuple(current))
                bucket_sizes.append(tuple(current_bytes))
                current, current_bytes = [], [0] * snapshots
            current.append(piece)
            for i, n in sizes:
                current_bytes[i] += n
    if current:
        buckets.append(tuple(current))
        bucket_sizes.append(tuple(current_bytes))
    return tuple(buckets), tuple(bucket_sizes)


def _uniform_buckets(entries: Sequence[Mapping[str, Entry]], budget: int) -> _Packed | None:
    """`plan_buckets`'s buckets where every snapshot plans the same parameters, in the same order,
    with the same bytes, none over the budget (a run of one model, the usual case): the greedy
    packing of one column of sizes, with no per-snapshot bookkeeping. None otherwise."""
    if not entries:
        return None
    names = list(entries[0])
    nbytes = list(map(_NBYTES, entries[0].values()))
    if max(nbytes, default=0) > budget or any(
        other is not entries[0]  # the same mapping: the same parameters (`_plain_entries`)
        and (list(other) != names or list(map(_NBYTES, other.values())) != nbytes)
        for other in entries[1:]
    ):
        return None
    ends, total = [], 0
    for i, n in enumerate(nbytes):
        if total + n > budget:  # greedy: a bucket closes before the piece that overflows it
            ends.append(i)  # (i > 0: no single piece is over the budget here)
            total = 0
        total += n
    bounds = list(zip([0, *ends], [*ends, len(names)]))
    pieces = list(map(_new_piece, zip(names, repeat(0), repeat(None))))
    buckets = tuple(tuple(pieces[lo:hi]) for lo, hi in bounds if hi > lo)
    snapshots = len(entries)
    sizes = tuple((sum(nbytes[lo:hi]),) * snapshots for lo, hi in bounds if hi > lo)
    return buckets, sizes
