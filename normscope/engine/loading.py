"""Reading one bucket of one snapshot: lazy refs → CPU tensors, checked against their headers."""

from __future__ import annotations

import operator
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING, Any

from normscope.engine.in_place import InPlaceColumns, in_place_columns
from normscope.engine.plan import Entry, Piece, dtype_of
from normscope.errors import BadInputError, NormscopeError
from normscope.snapshot import Snapshot

if TYPE_CHECKING:  # pragma: no cover
    import torch

_PAGE = 4096
_PREFAULT_MIN_BYTES = (
    1 << 20
)  # below this a torch call costs more than the faults it moves


@dataclass
class LoadedWork:
    """Everything read for (bucket, snapshot), as columns in bucket order: the pieces this
    snapshot has, each parameter's full shape in it, and the tensors (weights; optimizer streams,
    None where a piece has none). Columns, not an object per piece: the reader and the driver
    handle tens of thousands of pieces on a ResNet-shaped run, and lists let them compare and
    group whole columns at once. Tensors keep their shapes; the torch kernels flatten them."""

    bucket: int
    snapshot: int
    pieces: list[Piece] = field(default_factory=list)
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    # tensors, or refs the fused kernel reads in place (`in_place` of `load_work`)
    weight: list[torch.Tensor] = field(default_factory=list)
    buf: list[torch.Tensor | None] = field(default_factory=list)
    sq: list[torch.Tensor | None] = field(default_factory=list)
    # where every piece is such a ref (and no optimizer state): the kernel's arrays for them
    columns: InPlaceColumns | None = None

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor, piece by piece: weight, then buf and sq where present."""
        return [t for ts in zip(self.weight, self.buf, self.sq) for t in ts if t is not None]

    def replace_tensors(self, tensors: list[torch.Tensor]) -> None:
        """Put `tensors` (in `tensors()`'s order, e.g. device copies) in place of the loaded ones."""
        it = iter(tensors)
        weight: list[torch.Tensor] = []
        buf: list[torch.Tensor | None] = []
        sq: list[torch.Tensor | None] = []
        for had_buf, had_sq in zip(self.buf, self.sq):
            weight.append(next(it))
            buf.append(None if had_buf is None else next(it))
            sq.append(None if had_sq is None else next(it))
        self.weight, self.buf, self.sq = weight, buf, sq


def _read(handle: Any, piece: Piece, shape: tuple[int, ...], what: str, path: str
          ) -> torch.Tensor:  # fmt: skip
    """The piece's rows of one handle (a TensorRef, or an already-loaded tensor), checked against
    the header's `shape`. Errors name it as `what` (e.g. "tensor") of the piece's parameter in
    `path` (formatted only then: this runs per tensor)."""
    import torch

    def where() -> str:
        return f"{what} {piece.name!r} in {path}"

    try:
        if isinstance(handle, torch.Tensor):
            tensor = handle if piece.whole else handle[piece.start : piece.stop]
        elif piece.whole:
            tensor = handle.load()
        elif hasattr(handle, "load_rows"):
            tensor = handle.load_rows(piece.start, min(piece.stop, shape[0]))
        else:  # no sliced reads: the whole tensor is read (mmap-backed refs make this cheap)
            tensor = handle.load()[piece.start : piece.stop]
    except NormscopeError:
        raise
    except Exception as exc:  # a reader's own failure on corrupt data: one line for the user
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise BadInputError(f"cannot read {where()}: {detail}") from exc
    if not isinstance(tensor, torch.Tensor):
        raise BadInputError(
            f"cannot read {where()}: the reader returned {type(tensor).__name__}, not a tensor"
        )
    expected = (
        shape
        if piece.whole
        else (max(0, min(piece.stop, shape[0]) - piece.start), *shape[1:])
    )
    if tuple(tensor.shape) != tuple(expected):
        raise BadInputError(
            f"{where()} has shape {tuple(tensor.shape)} but its header says {tuple(expected)}"
        )
    if not tensor.is_floating_point():
        raise BadInputError(
            f"{where()} holds {dtype_of(tensor)} values; normscope reduces floating-point tensors"
        )
    return tensor


def prefault(tensor: torch.Tensor) -> None:
    """Touch one byte per page so an mmap-backed tensor is paged in by the reader thread, not the
    reducer (a page-cache hit still costs a fault per page)."""
    import torch

    if (
        tensor.numel() * tensor.element_size() >= _PREFAULT_MIN_BYTES
        and tensor.is_contiguous()
    ):
        tensor.reshape(-1).view(torch.uint8)[::_PAGE].sum()


def load_work(
    snapshots: list[Snapshot] | tuple[Snapshot, ...],
    bucket: tuple[Piece, ...],
    b: int,
    t: int,
    entries: Mapping[str, Entry],
    *,
    touch_pages: bool = True,
    in_place: bool = False,
) -> LoadedWork:
    """Read bucket `b` of snapshot `t`: every piece the snapshot has, and its optimizer streams
    (`entries`: the plan's shapes and optimizer handles for this snapshot). `touch_pages`:
    `prefault` the pieces here, on the reader thread. `in_place`: the fused CPU kernel will
    reduce this work, so a whole ref with an `address` (see `snapshot.TensorRef`) goes into the
    columns as it is, for the kernel to read there; no tensor is built for it."""
    snap = snapshots[t]
    tensors, path = snap.tensors, snap.meta.path
    if in_place:
        work = _in_place_work(tensors, bucket, b, t, entries)
        if work is not None:
            return work
    work = LoadedWork(b, t)
    pieces, shapes, weights, bufs, sqs = work.pieces, work.shapes, work.weight, work.buf, work.sq
    for piece in bucket:
        entry = entries.get(piece.name)
        if entry is None:
            continue
        name, shape = piece.name, entry.shape
        ref = tensors[name]
        whole = piece.stop is None
        held = getattr(ref, "held", None) if whole else None
        if in_place and whole and _has_address(ref):
            weight = ref  # its shape and dtype are the entry's: the plan read them off it
        elif (  # a ref with its tensor in hand (snapshot.TensorRef): no call
            held is not None
            and isinstance(held, sys.modules["torch"].Tensor)  # held: torch is imported
            and held.shape == shape
            and held.is_floating_point()
        ):
            weight = held
        else:
            if piece.stop is not None and (not shape or piece.start >= shape[0]):
                continue
            weight = _read(ref, piece, shape, "tensor", path)
        buf = sq = None
        state = entry.state
        if state:
            # optimizer refs with an address go in as they are too (the plan checked their shape)
            if "buf" in state:
                buf = state["buf"]
                if not (in_place and whole and _has_address(buf)):
                    buf = _read(buf, piece, shape, "optimizer buf of", path)
            if "sq" in state:
                sq = state["sq"]
                if not (in_place and whole and _has_address(sq)):
                    sq = _read(sq, piece, shape, "optimizer sq of", path)
        if touch_pages:
            for tensor in (weight, buf, sq):
                if tensor is not None:
                    prefault(tensor)
        pieces.append(piece)
        shapes.append(shape)
        weights.append(weight)
        bufs.append(buf)
        sqs.append(sq)
    return work


_ADDRESS = operator.attrgetter("address")
_SHAPE = operator.attrgetter("shape")
_STATE = operator.attrgetter("state")
_WHOLE = operator.attrgetter("whole")
_NAME = operator.attrgetter("name")


def _in_place_work(
    tensors: Mapping[str, Any], bucket: tuple[Piece, ...], b: int, t: int,
    entries: Mapping[str, Entry],
) -> LoadedWork | None:  # fmt: skip
    """`load_work(in_place=True)` where every piece is a whole parameter this snapshot has, with
    no optimizer state, as a ref with an `address`: the columns are the refs themselves, made a
    column at a time (a ResNet-shaped bucket holds thousands). None where that is not so."""
    if not all(map(_WHOLE, bucket)):
        return None
    names = list(map(_NAME, bucket))
    planned = list(map(entries.get, names))
    if any(map(operator.is_, planned, repeat(None))) or any(map(_STATE, planned)):
        return None
    try:
        refs = list(map(tensors.__getitem__, names))
        addresses = list(map(_ADDRESS, refs))
    except (KeyError, AttributeError):  # refs of another kind
        return None
    if None in addresses:  # ints and None only: no tensor's __eq__ runs here
        return None
    absent: list[Any] = [None] * len(refs)
    return LoadedWork(b, t, list(bucket), list(map(_SHAPE, planned)), refs, absent, list(absent),
                      in_place_columns(refs, addresses))  # fmt: skip


def _has_address(handle: Any) -> bool:
    """A ref the fused kernel can read where it lies (see `snapshot.TensorRef`)."""
    return getattr(handle, "address", None) is not None
