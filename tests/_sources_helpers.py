"""Small real models and optimizers for the sources tests: trained a few steps, then saved."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )


def small_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(8, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 2)
    )


def train(
    model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int = 0
) -> None:
    """A few real optimizer steps on a fixed random regression problem."""
    gen = torch.Generator().manual_seed(seed)
    first = next(model.parameters())
    shape = (16, 1, 6, 6) if first.dim() == 4 else (16, 8)
    for _ in range(steps):
        x = torch.randn(shape, generator=gen)
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def sgd(model: nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def adamw(model: nn.Module) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)


def fingerprint(root: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file under root, to prove nothing was modified."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            out[path] = (digest, os.stat(path).st_mtime_ns)
    return out


def load_all(run) -> None:  # type: ignore[no-untyped-def]
    """Touch every tensor and optimizer-state ref, as the engine would."""
    for snap in run.snapshots:
        for ref in snap.tensors.values():
            ref.load()
        for state in snap.optimizer_state.values():
            for value in state.values():
                if hasattr(value, "load"):
                    value.load()
