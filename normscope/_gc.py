"""Pausing the cyclic garbage collector while a bulk job builds objects it does not need to scan.

Opening a run and reducing it allocate hundreds of thousands of small objects that hold no
reference cycles (refs, tensors, pieces, stats): on a 1 GB run of 8.4k-tensor torch files, the
few full collections those allocations trigger cost about a third of the open and of the reduce
(docs/benchmarks.md, "Behind the design"). (Freezing the objects that existed before the job, tried first, only
spared the ~170k objects importing torch leaves behind: the job's own objects were still rescanned.)
Reference counting still frees everything as usual; cycles made meanwhile are collected after.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """`gc.disable()` for the duration, re-enabled on exit if it was enabled at entry (so nested
    uses and callers that manage the collector themselves are left as they were)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def collector_resumed() -> None:
    """The collector on again inside a `collector_paused()` block, for work that runs on (a live
    view's refresh loop): what it allocates from here on is collected as usual. Whatever existed
    before is frozen first (`gc.freeze`: the libraries imported, the first frame's objects), so
    the collections of the loop do not walk it again and again."""
    gc.freeze()
    gc.enable()
