"""What a checkpoint file looked like when it was opened, to refuse it if it changes under us.

Tensors are read through private mappings of the files (`torch.load(mmap=True)`, the in-place
reader, safetensors views). A job that rewrites a checkpoint in place while normscope reads it
(`torch.save` over `last.ckpt` truncates the file first, as do sync tools) leaves mapped pages
with nothing behind them: touching one is a SIGBUS, which no Python code can catch. So every
snapshot carries the size and modification time of each file it reads, taken before its tensors
were mapped, and the engine compares them with the files before it reads a snapshot's bucket and
after its sums are in: a file that changed ends the run with one line naming it, before any
vanished page is touched. A stat costs about a microsecond; a bucket is megabytes of tensors.
Between the two checks, only the fused kernel reads mapped pages, behind a SIGBUS guard; every
other reader gets its bytes by read calls (`file_reads`), where a file cut short is a short read.

Importable without torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import NamedTuple

from normscope.errors import BadInputError


class FileStamp(NamedTuple):
    path: str
    size: int
    mtime_ns: int


class FileSpan(NamedTuple):
    """Where a tensor's bytes lie in its file: `nbytes` from byte `offset` of `path`, in C order
    (see `snapshot.TensorRef.span`). The engine reads them with read calls where no guarded
    kernel reads the mapping (`file_reads`)."""

    path: str
    offset: int
    nbytes: int


def stamp_file(path: str) -> FileStamp | None:
    """The file's stamp now; None where it cannot be stat'ed (the reader then says why)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return FileStamp(path, st.st_size, st.st_mtime_ns)


def stamp_path(path: str) -> tuple[FileStamp, ...]:
    """A file's stamp, or the stamps of the regular files directly inside a directory (the
    checkpoint directories of the HF Trainer and torch.distributed.checkpoint)."""
    if os.path.isdir(path):
        try:
            names = sorted(os.listdir(path))
        except OSError:
            return ()
        found = (stamp_file(os.path.join(path, name)) for name in names)
        return tuple(s for s in found if s is not None and os.path.isfile(s.path))
    found_one = stamp_file(path)
    return () if found_one is None else (found_one,)


def merge_stamps(first: Iterable[FileStamp], then: Iterable[FileStamp]) -> tuple[FileStamp, ...]:
    """`first`, then the stamps of `then` for files `first` does not name: a stamp taken before
    a file was read wins over one taken after."""
    kept = {stamp.path: stamp for stamp in first}
    for stamp in then:
        kept.setdefault(stamp.path, stamp)
    return tuple(kept.values())


def check_unchanged(stamps: Iterable[FileStamp]) -> None:
    """BadInputError naming the first file whose size or modification time is not its stamp's."""
    for stamp in stamps:
        now = stamp_file(stamp.path)
        if now != stamp:
            if now is None:
                what = "was removed"
            elif now.size < stamp.size:
                what = f"shrank from {stamp.size} to {now.size} bytes"
            else:
                what = "was modified"
            raise BadInputError(
                f"{stamp.path} {what} while normscope was reading it (a job still writing it?); "
                "run again once it is complete"
            )
