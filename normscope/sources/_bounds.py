"""Work bounded by the bytes present: a checkpoint may not declare far more tensor bytes than it has.

A tensor's size comes from the file (a pickled shape and stride, a metadata entry), and the engine
reads every element its shape names. An "expanded" tensor saved with a stride of 0 names 2**40
elements over 4 bytes; torch.distributed.checkpoint metadata can declare any size; many views of
one storage repeat its bytes. Their norms are well defined, but reading them takes as long as
the shape says, not the file: a 2 KB file could keep the engine busy for hours. So the tensors
of a snapshot may declare at most `DECLARED_PER_STORED` times the bytes of its files (tied
weights declare a tensor twice, so ordinary checkpoints stay far below that); past it the
snapshot is refused with one line.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from typing import Any

from normscope.errors import BadInputError
from normscope.file_stamps import FileStamp

from ._refs import ITEMSIZE, MappedTensorRef

DECLARED_PER_STORED = 4
SLACK_BYTES = 1 << 20  # tiny files: a few expanded buffers are fine

_NBYTES = operator.attrgetter("nbytes")
_NUMEL, _DTYPE = operator.attrgetter("numel"), operator.attrgetter("dtype")


def declared_bytes(tensors: Mapping[str, Any], optimizer_state: Mapping[str, Mapping[str, Any]]) -> int:
    """The bytes the snapshot's tensors and optimizer tensors declare (exact: Python ints)."""
    refs = tensors.values()
    if set(map(type, refs)) == {MappedTensorRef}:  # thousands of them: the columns, not a call each
        total = sum(map(operator.mul, map(_NUMEL, refs), map(ITEMSIZE.__getitem__, map(_DTYPE, refs))))
    else:
        total = sum(map(_NBYTES, refs))
    for state in optimizer_state.values():
        total += sum(getattr(handle, "nbytes", 0) for handle in state.values())
    return total


def check_declared(path: str, tensors: Mapping[str, Any],
                   optimizer_state: Mapping[str, Mapping[str, Any]],
                   files: Iterable[FileStamp]) -> None:  # fmt: skip
    """BadInputError where the tensors declare more than the files can hold (module docstring)."""
    stored = sum(stamp.size for stamp in files)
    declared = declared_bytes(tensors, optimizer_state)
    if declared > DECLARED_PER_STORED * stored + SLACK_BYTES:
        largest = max(tensors.values(), key=_NBYTES, default=None)
        example = f" ({largest.name}: {largest.numel} elements)" if largest is not None else ""
        raise BadInputError(
            f"{path} declares {declared} bytes of tensors in {stored} bytes of files{example}: "
            "an expanded (stride-0) tensor or damaged metadata; save the tensors with "
            ".contiguous() or check the file"
        )
