"""Reading one bucket of one snapshot: lazy refs → flat CPU tensors, checked against their headers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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
class LoadedPiece:
    """One piece of one parameter as flat tensors: the weights and the optimizer streams present."""

    piece: Piece
    shape: tuple[int, ...]  # the parameter's full shape in this snapshot
    weight: torch.Tensor
    buf: torch.Tensor | None = None
    sq: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size()
            for t in (self.weight, self.buf, self.sq)
            if t is not None
        )


@dataclass
class LoadedWork:
    """Everything read for (bucket, snapshot); `pieces` in bucket order."""

    bucket: int
    snapshot: int
    pieces: list[LoadedPiece] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.pieces)


def _read(
    handle: Any, piece: Piece, shape: tuple[int, ...], where: str
) -> torch.Tensor:
    """The piece's rows of one handle (a TensorRef, or an already-loaded tensor) as a flat tensor."""
    import torch

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
    except (
        Exception
    ) as exc:  # a reader's own failure on corrupt data: one line for the user
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise BadInputError(f"cannot read {where}: {detail}") from exc
    if not isinstance(tensor, torch.Tensor):
        raise BadInputError(
            f"cannot read {where}: the reader returned {type(tensor).__name__}, not a tensor"
        )
    expected = (
        shape
        if piece.whole
        else (max(0, min(piece.stop, shape[0]) - piece.start), *shape[1:])
    )
    if tuple(tensor.shape) != tuple(expected):
        raise BadInputError(
            f"{where} has shape {tuple(tensor.shape)} but its header says {tuple(expected)}"
        )
    if not (tensor.is_floating_point()):
        raise BadInputError(
            f"{where} holds {dtype_of(tensor)} values; normscope reduces floating-point tensors"
        )
    return tensor.reshape(-1)


def prefault(tensor: torch.Tensor) -> None:
    """Touch one byte per page so an mmap-backed tensor is paged in by the reader thread, not the
    reducer (a page-cache hit still costs a fault per page)."""
    import torch

    if (
        tensor.numel() * tensor.element_size() >= _PREFAULT_MIN_BYTES
        and tensor.is_contiguous()
    ):
        tensor.view(torch.uint8)[::_PAGE].sum()


def load_work(
    snapshots: list[Snapshot] | tuple[Snapshot, ...],
    bucket: tuple[Piece, ...],
    b: int,
    t: int,
    entries: Mapping[str, Entry],
    *,
    touch_pages: bool = True,
) -> LoadedWork:
    """Read bucket `b` of snapshot `t`: every piece the snapshot has, and its optimizer streams
    (`entries`: the plan's shapes and optimizer handles for this snapshot). `touch_pages`:
    `prefault` the pieces here, on the reader thread."""
    snap = snapshots[t]
    work = LoadedWork(b, t)
    for piece in bucket:
        entry = entries.get(piece.name)
        if entry is None:
            continue
        ref, shape = snap.tensors[piece.name], entry.shape
        if not piece.whole and (not shape or piece.start >= shape[0]):
            continue
        where = f"tensor {piece.name!r} in {snap.meta.path}"
        loaded = LoadedPiece(piece, shape, _read(ref, piece, shape, where))
        for stream, handle in entry.state.items():
            tensor = _read(
                handle,
                piece,
                shape,
                f"optimizer {stream} of {piece.name!r} in {snap.meta.path}",
            )
            setattr(loaded, stream, tensor)
        if touch_pages:
            for tensor in (loaded.weight, loaded.buf, loaded.sq):
                if tensor is not None:
                    prefault(tensor)
        work.pieces.append(loaded)
    return work
