"""Host → device transfer for the CUDA path: pinned staging buffers, non-blocking copies, double buffering.

The reader thread packs a loaded bucket into one of two pinned host buffers (`pack`), starts one
non-blocking copy of the whole buffer on a side stream and records an event; the reducer's stream
waits on that event, so the copy of bucket k+1 overlaps the reduction of bucket k. A pinned buffer
is reused only after the copy out of it has completed. `pack`/`unpack` are plain tensor code and are
tested on the CPU; the stream/event part runs only with CUDA.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch  # this module is imported only where torch is (CUDA runs, tests)

_ALIGN = 64  # bytes; keeps every packed tensor aligned for vectorised kernels


@dataclass(frozen=True)
class Slot:
    """Where one tensor lives inside a packed byte buffer."""

    offset: int
    numel: int
    dtype: torch.dtype


def layout(tensors: Sequence[torch.Tensor]) -> tuple[list[Slot], int]:
    """Aligned byte offsets for packing `tensors` back to back, and the total size."""
    slots, offset = [], 0
    for t in tensors:
        slots.append(Slot(offset, t.numel(), t.dtype))
        offset += -(-t.numel() * t.element_size() // _ALIGN) * _ALIGN
    return slots, offset


def pack(
    buffer: torch.Tensor, tensors: Sequence[torch.Tensor], slots: Sequence[Slot]
) -> None:
    """Copy flat `tensors` into the uint8 `buffer` at their slots (one `_foreach_copy_`)."""
    dst = unpack(buffer, slots)
    if dst:
        torch._foreach_copy_(dst, [t.reshape(-1) for t in tensors])


def unpack(buffer: torch.Tensor, slots: Sequence[Slot]) -> list[torch.Tensor]:
    """Typed flat views of the packed tensors inside the uint8 `buffer`."""
    views = []
    for s in slots:
        nbytes = s.numel * torch.empty((), dtype=s.dtype).element_size()
        views.append(buffer[s.offset : s.offset + nbytes].view(s.dtype))
    return views


@dataclass
class Staged:
    """Device views of one transferred batch and the event that says the copy has landed."""

    tensors: list[torch.Tensor]
    device_buffer: torch.Tensor | None
    ready: torch.cuda.Event | None

    def wait(self) -> list[torch.Tensor]:
        """Make the current stream wait for the copy; mark the buffer as used by that stream."""
        if self.ready is not None:
            stream = torch.cuda.current_stream(self.device_buffer.device)
            stream.wait_event(self.ready)
            self.device_buffer.record_stream(stream)
        return self.tensors


class CudaStager:
    """Two pinned host buffers used alternately; one side stream for the copies."""

    def __init__(self, device: torch.device, capacity_bytes: int) -> None:
        self.device = device
        self.capacity = max(_ALIGN, capacity_bytes)
        self._pinned = [
            torch.empty(self.capacity, dtype=torch.uint8, pin_memory=True)
            for _ in range(2)
        ]
        self._copied = [torch.cuda.Event(), torch.cuda.Event()]
        self._used = [False, False]
        self._next = 0
        self._stream = torch.cuda.Stream(device)

    def to_device(self, tensors: Sequence[torch.Tensor]) -> Staged:
        slots, total = layout(tensors)
        if total > self.capacity:  # a single oversized row: copy it as it is, unpinned
            with torch.cuda.stream(self._stream):
                moved = [t.to(self.device, non_blocking=False) for t in tensors]
            self._stream.synchronize()
            return Staged(moved, None, None)
        i = self._next
        self._next = 1 - i
        if self._used[i]:
            self._copied[
                i
            ].synchronize()  # the copy that last read this pinned buffer is done
        host = self._pinned[i][:total]
        pack(host, tensors, slots)
        with torch.cuda.stream(self._stream):
            device_buffer = torch.empty(total, dtype=torch.uint8, device=self.device)
            device_buffer.copy_(host, non_blocking=True)
            self._copied[i].record(self._stream)
        self._used[i] = True
        ready = torch.cuda.Event()
        ready.record(self._stream)
        return Staged(unpack(device_buffer, slots), device_buffer, ready)
