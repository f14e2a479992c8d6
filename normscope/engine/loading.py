"""Reading one bucket of one snapshot: lazy refs → CPU tensors, checked against their headers.

What the tensors are made of depends on who reduces them. For the fused CPU kernel, which reads
mapped pages behind a SIGBUS guard, refs go in as they are and tensors stay views of their
files' private mappings. For anything else (torch's kernels, row sums, the CUDA staging copy),
every tensor is read with read calls into memory of its own (`file_reads`), so a file cut short
meanwhile is a one-line error rather than a SIGBUS.

    item = WorkItem.from_plan(plan, snapshots, bucket=b, snapshot=t)
    work = load_work(item, in_place=True)
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING, Any

from normscope._torch_seen import tensor_type
from normscope.engine.fused import takes_as_is
from normscope.engine.in_place import InPlaceColumns, InPlaceLayout, in_place_layout
from normscope.engine.plan import Entry, Piece, Plan, dtype_of
from normscope.errors import BadInputError, NormscopeError
from normscope.file_reads import FileReader
from normscope.snapshot import Snapshot, has_address, holds_tensor, reads_rows

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class WorkItem:
    """What one (bucket, snapshot) of the schedule reads.

    `bucket` and `snapshot` are indices into the plan's buckets and the run's snapshots;
    `pieces` are that bucket's pieces, `entries` the plan's shapes and optimizer handles for that
    snapshot, and `source` the snapshot itself.
    """

    bucket: int
    snapshot: int
    pieces: tuple[Piece, ...]
    entries: Mapping[str, Entry]
    source: Snapshot

    @classmethod
    def from_plan(cls, plan: Plan, snapshots: Sequence[Snapshot], *, bucket: int,
                  snapshot: int) -> WorkItem:  # fmt: skip
        """The item for bucket `bucket` of snapshot `snapshot`.

        Args:
            plan: the run's plan (`plan.plan_buckets`).
            snapshots: the run's snapshots, in the plan's order.
            bucket: index of the bucket in `plan.buckets`.
            snapshot: index of the snapshot in `snapshots`.

        Returns:
            The work item.
        """
        return cls(bucket, snapshot, plan.buckets[bucket], plan.entries[snapshot],
                   snapshots[snapshot])  # fmt: skip


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


def _read(handle: Any, piece: Piece, shape: tuple[int, ...], what: str, path: str, *,
          reader: FileReader | None = None) -> torch.Tensor:  # fmt: skip
    """The piece's rows of one handle (a TensorRef, or an already-loaded tensor), checked against
    the header's `shape`.

    Args:
        handle: the ref, or a tensor already loaded.
        piece: which rows of the parameter.
        shape: the parameter's full shape, as the header gives it.
        what: what the handle is of the piece's parameter, for errors ("tensor").
        path: the snapshot's path, for errors (formatted only then: this runs per tensor).
        reader: read the rows into memory of their own with it: by the ref's `span` where it
            has one, else copied out of the file that backs what the ref gives
            (`FileReader.tensor`). None: whatever the ref gives, views of a mapping included.

    Returns:
        The rows, a floating-point tensor of the piece's shape.

    Raises:
        BadInputError: the reader failed, or gave something else than the header says.
    """
    import torch  # lazy: only refs not read in place build tensors, and those import torch

    def where() -> str:
        return f"{what} {piece.name!r} in {path}"

    try:
        tensor = _rows(handle, piece, shape, reader, torch.Tensor)
    except NormscopeError:
        raise
    except Exception as exc:  # a reader's own failure on corrupt data: one line for the user
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise BadInputError(f"cannot read {where()}: {detail}") from exc
    if not isinstance(tensor, torch.Tensor):
        raise BadInputError(
            f"cannot read {where()}: the reader returned {type(tensor).__name__}, not a tensor"
        )
    expected = shape if piece.whole else (max(0, _row_stop(piece, shape) - piece.start), *shape[1:])
    if tuple(tensor.shape) != tuple(expected):
        raise BadInputError(
            f"{where()} has shape {tuple(tensor.shape)} but its header says {tuple(expected)}"
        )
    if not tensor.is_floating_point():
        raise BadInputError(
            f"{where()} holds {dtype_of(tensor)} values; normscope reduces floating-point tensors"
        )
    return tensor


def _row_stop(piece: Piece, shape: tuple[int, ...]) -> int:
    """Where the rows of `piece` end in a parameter of `shape` (at its last row at most)."""
    return shape[0] if piece.stop is None else min(piece.stop, shape[0])


def _rows(handle: Any, piece: Piece, shape: tuple[int, ...], reader: FileReader | None,
          tensor: type[torch.Tensor]) -> Any:  # fmt: skip
    """The piece's rows of `handle`, unchecked (see `_read`); `tensor` is torch.Tensor."""
    span = None if reader is None or isinstance(handle, tensor) else handle.span
    if span is not None and reader is not None:  # read calls at the ref's place in its file
        if piece.whole:
            return reader.span(span, handle.dtype, handle.shape)
        return reader.rows(span, handle.dtype, handle.shape, piece.start, _row_stop(piece, shape))
    if isinstance(handle, tensor):
        rows = handle if piece.whole else handle[piece.start : piece.stop]
    elif piece.whole:
        rows = handle.load()
    elif reads_rows(handle):
        rows = handle.load_rows(piece.start, _row_stop(piece, shape))
    else:  # no sliced reads: the whole tensor is read (mmap-backed refs make this cheap)
        rows = handle.load()[piece.start : piece.stop]
    if reader is not None and isinstance(rows, tensor):  # copied out of the file behind it
        rows = reader.tensor(rows)
    return rows


def load_work(item: WorkItem, *, in_place: bool = False,
              known: InPlaceBuckets | None = None) -> LoadedWork:  # fmt: skip
    """Read one bucket of one snapshot: every piece the snapshot has, and its optimizer streams.

    Args:
        item: the bucket and snapshot, with the plan's entries for that snapshot.
        in_place: the fused CPU kernel, behind its SIGBUS guard, will reduce this work and
            nothing else reads it. A whole ref with an address (`snapshot.AddressedTensorRef`)
            then goes into the columns as it is, for the kernel to read there, and a tensor the
            kernel reads as it is (`fused.takes_as_is`) stays a view of its file. Every other
            tensor, and every tensor without `in_place`, is read into memory of its own
            (`file_reads`): torch's kernels, the row sums and the CUDA staging copy have no
            guard, and a page of a file cut short would be a SIGBUS.
        known: one run's `InPlaceBuckets`, kept by the caller from item to item: what the
            in-place path finds of a bucket from the plan alone is found once for all the
            snapshots planned with the same mapping.

    Returns:
        The pieces read, as columns.

    Raises:
        BadInputError: a tensor cannot be read, or is not what its header says.
    """
    if in_place:
        work = _in_place_work(item, known)
        if work is not None:
            return work
    tensors = item.source.tensors
    rows: list[tuple[Piece, tuple[int, ...], Any, Any, Any]] = []  # made into columns at the end
    with FileReader() as reader:
        reading = _PieceReader(item.source.meta.path, reader, in_place=in_place)
        for piece in item.pieces:
            entry = item.entries.get(piece.name)
            if entry is None:  # not in this snapshot
                continue
            shape = entry.shape
            weight = reading.weight(tensors[piece.name], piece, shape)
            if weight is None:
                continue
            buf = sq = None
            state = entry.state
            if state:
                buf = reading.state(state, "buf", piece, shape)
                sq = reading.state(state, "sq", piece, shape)
            rows.append((piece, shape, weight, buf, sq))
    work = LoadedWork(item.bucket, item.snapshot)
    if rows:
        work.pieces, work.shapes, work.weight, work.buf, work.sq = map(list, zip(*rows))
    return work


@dataclass(frozen=True)
class _PieceReader:
    """How `load_work` reads the pieces of one snapshot (see its `in_place`)."""

    path: str
    reader: FileReader
    _: KW_ONLY
    in_place: bool

    def weight(self, ref: Any, piece: Piece, shape: tuple[int, ...]) -> Any:
        """The piece's weight: the ref itself where the kernel reads it at its address, the
        tensor it holds where the kernel takes that as it is, else its rows read; None for a row
        slice past the end of this snapshot's tensor."""
        whole = piece.stop is None  # not `piece.whole`: this runs per tensor
        if self.in_place and whole:
            if has_address(ref) and ref.address is not None:
                return ref  # its shape and dtype are the entry's: the plan read them off it
            held = ref.held if holds_tensor(ref) else None
            if (  # its tensor in hand: no call
                held is not None
                and isinstance(held, tensor_type())  # held: a tensor only once torch is imported
                and held.shape == shape
                and held.is_floating_point()
                and takes_as_is(held)
            ):
                return held
        if not whole and (not shape or piece.start >= shape[0]):
            return None
        return self.read(ref, piece, shape, "tensor")

    def state(self, state: Mapping[str, Any], key: str, piece: Piece,
              shape: tuple[int, ...]) -> Any:  # fmt: skip
        """The piece's optimizer stream `key` ("buf", "sq"); None where the parameter has none.
        A ref with an address goes in as it is too (the plan checked its shape)."""
        if key not in state:
            return None
        handle = state[key]
        if self.in_place and piece.stop is None and _addressed(handle):
            return handle
        return self.read(handle, piece, shape, f"optimizer {key} of")

    def read(self, handle: Any, piece: Piece, shape: tuple[int, ...], what: str) -> Any:
        """Rows read for the kernel that will reduce them: in place, whatever the ref gives
        unless the kernel cannot take it as it is (then torch's kernels would read it);
        otherwise into memory of their own."""
        if not self.in_place:
            return _read(handle, piece, shape, what, self.path, reader=self.reader)
        tensor = _read(handle, piece, shape, what, self.path)
        if not takes_as_is(tensor):
            tensor = _read(handle, piece, shape, what, self.path, reader=self.reader)
        return tensor


_ADDRESS = operator.attrgetter("address")
_SHAPE = operator.attrgetter("shape")
_STATE = operator.attrgetter("state")
_WHOLE = operator.attrgetter("whole")
_NAME = operator.attrgetter("name")
_DTYPE = operator.attrgetter("dtype")
_NUMEL = operator.attrgetter("numel")


@dataclass(frozen=True)
class _InPlaceBucket:
    """What `_in_place_work` finds of a bucket from the plan's entries alone: the parameters'
    names, shapes and kernel layout. The same for every snapshot planned with the same mapping
    (`plan._plain_entries` shares one between the snapshots of one model): found once, then
    only each snapshot's refs and their addresses are read."""

    pieces: tuple[Piece, ...]
    entries: Mapping[str, Entry]  # the mapping it was found with, known again by identity
    names: list[str]
    shapes: list[tuple[int, ...]]
    layout: InPlaceLayout


# One run's `_InPlaceBucket`s, by bucket index: the driver's, from item to item.
InPlaceBuckets = dict[int, _InPlaceBucket]


def _in_place_bucket(item: WorkItem) -> _InPlaceBucket | None:
    """The bucket's facts where every piece is a whole parameter this snapshot has, with no
    optimizer state, of a dtype the kernel reads; None otherwise. Dtypes and sizes are the
    plan's entries': the plan read them off this snapshot's refs."""
    bucket = item.pieces
    if not all(map(_WHOLE, bucket)):
        return None
    names = list(map(_NAME, bucket))
    planned = list(map(item.entries.get, names))
    if any(map(operator.is_, planned, repeat(None))) or any(map(_STATE, planned)):
        return None
    layout = in_place_layout(list(map(_DTYPE, planned)), list(map(_NUMEL, planned)))
    if layout is None:
        return None
    return _InPlaceBucket(bucket, item.entries, names, list(map(_SHAPE, planned)), layout)


def _in_place_work(item: WorkItem, known: InPlaceBuckets | None = None) -> LoadedWork | None:
    """`load_work(in_place=True)` where every piece is a whole parameter this snapshot has, with
    no optimizer state, as a ref with an address: the columns are the refs themselves, made a
    column at a time (a ResNet-shaped bucket holds thousands). None where that is not so."""
    facts = None if known is None else known.get(item.bucket)
    if facts is None or facts.entries is not item.entries or facts.pieces is not item.pieces:
        facts = _in_place_bucket(item)
        if facts is None:
            return None
        if known is not None:
            known[item.bucket] = facts
    try:
        # refs, in the column of tensors: the kernel reads them where they lie
        refs: list[Any] = list(map(item.source.tensors.__getitem__, facts.names))
    except KeyError:
        return None
    # one ref of each class: whether a class offers an address is decided per class
    if not all(map(has_address, dict(zip(map(type, refs), refs)).values())):
        return None  # refs of another kind
    addresses = list(map(_ADDRESS, refs))
    if None in addresses:  # ints and None only: no tensor's __eq__ runs here
        return None
    absent: list[Any] = [None] * len(refs)
    return LoadedWork(item.bucket, item.snapshot, list(item.pieces), list(facts.shapes), refs,
                      absent, list(absent), facts.layout.at(addresses))  # fmt: skip


def _addressed(handle: Any) -> bool:
    """A ref the fused kernel can read where it lies (`snapshot.AddressedTensorRef`)."""
    return has_address(handle) and handle.address is not None
