"""Where the CPU arithmetic runs: a few worker threads, each running torch single-threaded.

torch's own intra-op parallelism opens an OpenMP parallel region per kernel; the engine's kernels
work on cache-sized blocks, so each region is short, and on a busy machine (more runnable threads
than cores) every region waits a scheduler time slice for its slowest thread — measured here as
a 20-35x slowdown. Splitting a group's rows between our own threads, each calling torch with one
intra-op thread, keeps all cores busy without any barrier. The caller's thread setting is
restored when the workers stop. On CUDA the kernels run inline (`Inline`).
"""

from __future__ import annotations

import glob
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol, TypeVar

from normscope._torch_seen import imported_torch

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


def _default_threads() -> int:
    """torch's default intra-op thread count, told without importing torch where it is not
    imported: `OMP_NUM_THREADS` (or `MKL_NUM_THREADS`) where set, else the physical cores."""
    torch = imported_torch()
    if torch is not None:
        return torch.get_num_threads()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    cores = set()
    for topology in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/topology"):
        try:
            with open(f"{topology}/physical_package_id") as f, open(f"{topology}/core_id") as g:
                cores.add((f.read().strip(), g.read().strip()))
        except OSError:
            continue
    return len(cores) or os.cpu_count() or 1


class CpuWorkers:
    """A pool of `workers` threads (default: torch's intra-op thread count) for the CPU kernels.

    Each worker sets torch to one intra-op thread before its first task that finds torch imported:
    a run read in place by the fused kernel never imports torch, and one whose tensors torch
    builds has imported it by the time their kernels run."""

    def __init__(self, workers: int | None = None) -> None:
        torch = imported_torch()
        # the caller's torch thread count, restored on close once torch is used
        self._restore = None if torch is None else torch.get_num_threads()
        self._lock = threading.Lock()
        self._local = threading.local()
        self.workers = max(1, workers or _default_threads())
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="normscope-reduce")

    def _run(self, fn: Callable[..., T], *args: object) -> T:
        if not getattr(self._local, "single", False):
            torch = imported_torch()
            if torch is not None:
                with self._lock:
                    if self._restore is None:
                        self._restore = torch.get_num_threads()
                torch.set_num_threads(1)
                self._local.single = True
        return fn(*args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._restore is not None:
            imported_torch().set_num_threads(self._restore)

    def map(self, fn: Callable[..., T], args: Iterable[tuple]) -> list[T]:
        futures = [self._pool.submit(self._run, fn, *a) for a in args]
        return [f.result() for f in futures]

    def call(self, fn: Callable[..., T], *args: object) -> T:
        return self._pool.submit(self._run, fn, *args).result()

    def submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        return self._pool.submit(self._run, fn, *args)
