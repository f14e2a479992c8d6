"""Where the CPU arithmetic runs: a few worker threads, each running torch single-threaded.

torch's own intra-op parallelism opens an OpenMP parallel region per kernel; the engine's kernels
work on cache-sized blocks, so each region is short, and on a busy machine (more runnable threads
than cores) every region waits a scheduler time slice for its slowest thread — measured here as
a 20-35x slowdown. Splitting a group's rows between our own threads, each calling torch with one
intra-op thread, keeps all cores busy without any barrier. The caller's thread setting is
restored when the workers stop. On CUDA the kernels run inline (`Inline`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol, TypeVar

T = TypeVar("T")


class Runner(Protocol):
    workers: int

    def map(self, fn: Callable[..., T], args: Iterable[tuple]) -> list[T]: ...

    def call(self, fn: Callable[..., T], *args: object) -> T: ...

    def submit(self, fn: Callable[..., T], *args: object) -> Future[T]: ...


class Inline:
    """Run in the calling thread (CUDA: kernels are asynchronous anyway)."""

    workers = 1

    def map(self, fn: Callable[..., T], args: Iterable[tuple]) -> list[T]:
        return [fn(*a) for a in args]

    def call(self, fn: Callable[..., T], *args: object) -> T:
        return fn(*args)

    def submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        done: Future[T] = Future()
        try:
            done.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - delivered through the future, as a pool would
            done.set_exception(exc)
        return done


def _single_threaded() -> None:
    import torch

    torch.set_num_threads(1)


class CpuWorkers:
    """A pool of `workers` threads (default: torch's intra-op thread count) for the CPU kernels."""

    def __init__(self, workers: int | None = None) -> None:
        import torch

        self._restore = torch.get_num_threads()
        self.workers = max(1, workers or self._restore)
        self._pool = ThreadPoolExecutor(
            self.workers,
            thread_name_prefix="normscope-reduce",
            initializer=_single_threaded,
        )

    def close(self) -> None:
        import torch

        self._pool.shutdown(wait=True)
        torch.set_num_threads(self._restore)

    def map(self, fn: Callable[..., T], args: Iterable[tuple]) -> list[T]:
        futures = [self._pool.submit(fn, *a) for a in args]
        return [f.result() for f in futures]

    def call(self, fn: Callable[..., T], *args: object) -> T:
        return self._pool.submit(fn, *args).result()

    def submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        return self._pool.submit(fn, *args)
