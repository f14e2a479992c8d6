"""Reading one bucket of one snapshot: lazy refs → CPU tensors, checked against their headers.

What the tensors are made of depends on who reduces them. For the fused CPU kernel, which reads
mapped pages behind a SIGBUS guard, refs go in as they are and tensors stay views of their
files' private mappings. For anything else (torch's kernels, row sums, the CUDA staging copy),
every tensor is read with read calls into memory of its own (`file_reads`), so a file cut short
meanwhile is a one-line error rather than a SIGBUS.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING, Any

from normscope._torch_seen import tensor_type
from normscope.engine.fused import takes_as_is
from normscope.engine.in_place import InPlaceColumns, in_place_columns
from normscope.engine.plan import Entry, Piece, dtype_of
from normscope.errors import BadInputError, NormscopeError
from normscope.file_reads import FileReader
from normscope.snapshot import Snapshot

if TYPE_CHECKING:  # pragma: no cover
    import torch


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


def _read(handle: Any, piece: Piece, shape: tuple[int, ...], what: str, path: str,
          reader: FileReader | None = None) -> torch.Tensor:  # fmt: skip
    """The piece's rows of one handle (a TensorRef, or an already-loaded tensor), checked against
    the header's `shape`. Errors name it as `what` (e.g. "tensor") of the piece's parameter in
    `path` (formatted only then: this runs per tensor). With a `reader`, the rows are read into
    memory of their own: by the ref's `span` where it has one, else copied out of the file
    that backs what the ref gives (`FileReader.tensor`)."""
    import torch

    def where() -> str:
        return f"{what} {piece.name!r} in {path}"

    try:
        span = None if reader is None or isinstance(handle, torch.Tensor) else handle.span
        if span is not None:
            if piece.whole:
                tensor = reader.span(span, handle.dtype, handle.shape)  # type: ignore[union-attr]
            else:
                tensor = reader.rows(span, handle.dtype, handle.shape,  # type: ignore[union-attr]
                                     piece.start, min(piece.stop, shape[0]))  # fmt: skip
        elif isinstance(handle, torch.Tensor):
            tensor = handle if piece.whole else handle[piece.start : piece.stop]
        elif piece.whole:
            tensor = handle.load()
        elif hasattr(handle, "load_rows"):
            tensor = handle.load_rows(piece.start, min(piece.stop, shape[0]))
        else:  # no sliced reads: the whole tensor is read (mmap-backed refs make this cheap)
            tensor = handle.load()[piece.start : piece.stop]
        if reader is not None and span is None and isinstance(tensor, torch.Tensor):
            tensor = reader.tensor(tensor)
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


def load_work(
    snapshots: list[Snapshot] | tuple[Snapshot, ...],
    bucket: tuple[Piece, ...],
    b: int,
    t: int,
    entries: Mapping[str, Entry],
    *,
    in_place: bool = False,
) -> LoadedWork:
    """Read bucket `b` of snapshot `t`: every piece the snapshot has, and its optimizer streams
    (`entries`: the plan's shapes and optimizer handles for this snapshot).

    `in_place`: the fused CPU kernel, behind its SIGBUS guard, will reduce this work and nothing
    else reads it. A whole ref with an `address` (see `snapshot.TensorRef`) then goes into the
    columns as it is, for the kernel to read there, and a tensor the kernel reads as it is
    (`fused.takes_as_is`) stays a view of its file. Every other tensor, and every tensor without
    `in_place`, is read into memory of its own (`file_reads`): torch's kernels, the row sums and
    the CUDA staging copy have no guard, and a page of a file cut short would be a SIGBUS."""
    snap = snapshots[t]
    tensors, path = snap.tensors, snap.meta.path
    if in_place:
        work = _in_place_work(tensors, bucket, b, t, entries)
        if work is not None:
            return work
    work = LoadedWork(b, t)
    pieces, shapes, weights, bufs, sqs = work.pieces, work.shapes, work.weight, work.buf, work.sq
    with FileReader() as reader:
        private = None if in_place else reader

        def read(handle: Any, piece: Piece, shape: tuple[int, ...], what: str) -> torch.Tensor:
            tensor = _read(handle, piece, shape, what, path, private)
            if private is None and not takes_as_is(tensor):  # torch's kernels would read it
                tensor = _read(handle, piece, shape, what, path, reader)
            return tensor

        for piece in bucket:
            entry = entries.get(piece.name)
            if entry is None:
                continue
            name, shape = piece.name, entry.shape
            ref = tensors[name]
            whole = piece.stop is None
            held = getattr(ref, "held", None) if whole and in_place else None
            if in_place and whole and _has_address(ref):
                weight = ref  # its shape and dtype are the entry's: the plan read them off it
            elif (  # a ref with its tensor in hand (snapshot.TensorRef): no call
                held is not None
                and isinstance(held, tensor_type())  # held: a tensor only once torch is imported
                and held.shape == shape
                and held.is_floating_point()
                and takes_as_is(held)
            ):
                weight = held
            else:
                if piece.stop is not None and (not shape or piece.start >= shape[0]):
                    continue
                weight = read(ref, piece, shape, "tensor")
            buf = sq = None
            state = entry.state
            if state:
                # optimizer refs with an address go in as they are too (the plan checked their
                # shape)
                if "buf" in state:
                    buf = state["buf"]
                    if not (in_place and whole and _has_address(buf)):
                        buf = read(buf, piece, shape, "optimizer buf of")
                if "sq" in state:
                    sq = state["sq"]
                    if not (in_place and whole and _has_address(sq)):
                        sq = read(sq, piece, shape, "optimizer sq of")
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
