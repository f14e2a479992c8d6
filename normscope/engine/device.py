"""Which device reduces: `auto` takes CUDA when present, else the CPU."""

from __future__ import annotations

from typing import TYPE_CHECKING

from normscope.errors import BadInputError

if TYPE_CHECKING:  # pragma: no cover
    import torch


def resolve_device(device: str = "auto") -> torch.device:
    import torch

    spec = (device or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
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
