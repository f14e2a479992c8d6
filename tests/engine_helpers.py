"""In-memory TensorRefs for the engine tests: plain, counting, and memory-instrumented."""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field

import torch

from normscope.snapshot import Snapshot, SnapshotMeta


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class MemoryRef:
    """A TensorRef over a tensor already in memory; `load_rows` slices the first dimension."""

    name: str
    tensor: torch.Tensor
    span = None  # in memory: no file behind it (`snapshot.TensorRef`)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    @property
    def dtype(self) -> str:
        return dtype_name(self.tensor.dtype)

    def load(self) -> torch.Tensor:
        return self.tensor

    def load_rows(self, start: int, stop: int) -> torch.Tensor:
        return self.tensor[start:stop]


@dataclass
class HeldBytes:
    """How many bytes handed out by `TrackedRef`s are alive now, the peak, and the total read."""

    now: int = 0
    peak: int = 0
    read: int = 0
    loads: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acquire(self, nbytes: int, key: str) -> None:
        with self.lock:
            self.now += nbytes
            self.read += nbytes
            self.peak = max(self.peak, self.now)
            self.loads[key] = self.loads.get(key, 0) + nbytes

    def release(self, nbytes: int) -> None:
        with self.lock:
            self.now -= nbytes


@dataclass
class TrackedRef:
    """Every load returns a fresh copy whose memory is tracked until its storage is freed.

    The copy lives in a numpy array that the tensor's storage keeps alive, so the finalizer fires
    only when no view of it remains anywhere (the engine's flat views included).
    """

    name: str
    tensor: torch.Tensor
    held: HeldBytes
    key: str
    span = None  # in memory: no file behind it (`snapshot.TensorRef`)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    @property
    def dtype(self) -> str:
        return dtype_name(self.tensor.dtype)

    def _hand_out(self, source: torch.Tensor) -> torch.Tensor:
        raw = source.contiguous().reshape(-1).view(torch.uint8).numpy().copy()
        nbytes = raw.nbytes
        self.held.acquire(nbytes, self.key)
        weakref.finalize(raw, self.held.release, nbytes)
        return torch.from_numpy(raw).view(source.dtype).reshape(source.shape)

    def load(self) -> torch.Tensor:
        return self._hand_out(self.tensor)

    def load_rows(self, start: int, stop: int) -> torch.Tensor:
        return self._hand_out(self.tensor[start:stop])


def snapshot(
    i: int, tensors: dict, optimizer_state: dict | None = None, make_ref=None
) -> Snapshot:
    """A snapshot at step i over in-memory tensors; `make_ref(name, tensor, key)` builds each ref."""
    make = make_ref or (lambda name, tensor, key: MemoryRef(name, tensor))
    refs = {name: make(name, t, f"step{i}/{name}") for name, t in tensors.items()}
    state = {
        name: {
            k: make(name, v, f"step{i}/{name}/{k}")
            if isinstance(v, torch.Tensor)
            else v
            for k, v in st.items()
        }
        for name, st in (optimizer_state or {}).items()
    }
    return Snapshot(
        SnapshotMeta(path=f"mem/step{i}", step=i, epoch=None, order_source="embedded"),
        refs,
        state,
    )


def tracked(held: HeldBytes):
    """A `make_ref` for `snapshot` that builds `TrackedRef`s reporting to `held`."""
    return lambda name, tensor, key: TrackedRef(name, tensor, held, key)


def f64(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).double()


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)
