"""A reader thread that loads the next work item while the caller reduces the current one.

Reading (file I/O, page faults, safetensors copies, pinned staging) releases the GIL, as do torch's
kernels, so one reader thread overlaps I/O with compute. At most `depth` items are read ahead of the
consumer, which bounds memory: the consumer's current item, its previous one, and `depth` more.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

_DONE = object()


class Prefetcher(Generic[Item, Result]):
    """Iterate `(item, load(item))` in order, loading on a background thread.

    Use as a context manager: leaving it early (an exception in the consumer) stops the thread.
    An exception raised by `load` is re-raised in the consumer at that item's turn.
    """

    def __init__(
        self, items: Iterable[Item], load: Callable[[Item], Result], *, depth: int = 1
    ) -> None:
        self._items = items
        self._load = load
        self._slots = threading.Semaphore(max(1, depth))
        self._results: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="normscope-reader", daemon=True
        )

    def __enter__(self) -> Prefetcher[Item, Result]:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._slots.release()  # wake a reader waiting for a slot
        self._thread.join()
        while not self._results.empty():  # drop what was read ahead
            self._results.get_nowait()

    def _run(self) -> None:
        try:
            for item in self._items:
                while not self._slots.acquire(timeout=0.1):
                    if self._stop.is_set():
                        return
                if self._stop.is_set():
                    return
                self._results.put((item, self._load(item), None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised in its thread
            self._results.put((None, None, exc))
            return
        self._results.put(_DONE)

    def __iter__(self) -> Iterator[tuple[Item, Result]]:
        while True:
            entry = self._results.get()
            if entry is _DONE:
                return
            item, result, error = entry
            if error is not None:
                raise error
            self._slots.release()  # the consumer owns this one now: the reader may start the next
            yield item, result
