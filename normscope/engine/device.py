"""Which device reduces: `auto` takes CUDA when present, else the CPU."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, NamedTuple

from normscope.errors import BadInputError

if TYPE_CHECKING:  # pragma: no cover
    import torch


class CpuDevice(NamedTuple):
    """The CPU as the engine asks of a device (`.type`, `.index`), with no torch imported: a run
    read in place by the fused kernel needs no torch at all."""

    type: str = "cpu"
    index: None = None

    def __str__(self) -> str:
        return "cpu"


CPU = CpuDevice()

# What a GPU torch can use leaves on Linux: NVIDIA's device nodes and driver, ROCm's, WSL's.
_GPU_PATHS = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")


def _no_gpu_here() -> bool:
    """True where torch.cuda.is_available() is certainly False, told without importing torch
    (~1.4 s): a Linux machine with none of the device nodes a GPU driver makes."""
    return sys.platform.startswith("linux") and not any(map(os.path.exists, _GPU_PATHS))


def resolve_device(device: str | torch.device | None = "auto") -> torch.device | CpuDevice:
    """"auto", "cpu", "cuda" or "cuda:N" (or a `torch.device` naming one) as the engine's device."""
    if device is not None and not isinstance(device, str):
        device = str(device)  # a torch.device's name ("cpu", "cuda:1") takes the same checks
    spec = (device or "auto").strip().lower()
    if spec == "cpu" or (spec == "auto" and _no_gpu_here()):
        return CPU
    import torch  # lazy: only a machine that may have a GPU asks torch about it

    if spec == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else CPU
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise BadInputError(
                f"--device {device} requested but CUDA is not available"
            )
        try:
            resolved = torch.device(spec)
        except RuntimeError:
            raise BadInputError(
                f"invalid device {device!r}; use auto, cpu, cuda or cuda:N"
            ) from None
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise BadInputError(
                f"--device {device} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return resolved
    raise BadInputError(f"invalid device {device!r}; use auto, cpu, cuda or cuda:N")
