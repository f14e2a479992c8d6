"""Shared by the live-log tests: real digits data and a small BN CNN (trains in well under a second)."""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(digits.target, dtype=torch.int64)


def digits_tensors(n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _digits()
    return x[:n], y[:n]


@contextlib.contextmanager
def one_thread():
    """Tiny models on a shared 2-core box: intra-op threads only contend (measured 50x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def small_bn_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10),
    )


def batches(x: torch.Tensor, y: torch.Tensor, size: int = 64):
    for start in range(0, len(x) - size + 1, size):
        yield x[start:start + size], y[start:start + size]
