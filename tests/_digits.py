"""A small BatchNorm CNN on scikit-learn's digits (1797 real 8×8 images), trained deterministically
so that an interrupted-and-resumed run repeats an uninterrupted one exactly."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.long)
    return x, y


def bn_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10),
    )


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                epoch: int, batch_size: int = 64) -> int:
    """One epoch in an order fixed by the epoch number; returns the number of optimizer steps."""
    model.train()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1000 + epoch))
    steps = 0
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        steps += 1
    return steps


def sq_norms_float64(model: nn.Module) -> dict[str, float]:
    return {n: float(p.detach().double().pow(2).sum()) for n, p in model.named_parameters()}


def as_numpy(values) -> np.ndarray:
    return np.asarray(values, dtype=float)
