"""scikit-learn's bundled digits (1797 real 8×8 images, no download) as tensors, plus augmentation."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

TEST_SIZE = 360  # 1437 training images: 23 batches of 64 per epoch


@dataclass(frozen=True)
class DigitsSplit:
    """Images ``(N, 1, 8, 8)`` float32 in [0, 1] and int64 labels, split once with a fixed seed."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_digits_split(seed: int = 0) -> DigitsSplit:
    """A stratified train/test split of ``sklearn.datasets.load_digits`` (the ``samples`` extra)."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise ImportError("the sample runs need scikit-learn: pip install 'normscope[samples]'") from exc
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images, digits.target, test_size=TEST_SIZE, random_state=seed, stratify=digits.target
    )

    def images(a) -> torch.Tensor:  # pixel values are integers 0..16
        return torch.as_tensor(a, dtype=torch.float32).unsqueeze(1) / 16.0

    def labels(a) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.int64)

    return DigitsSplit(images(x_train), labels(y_train), images(x_test), labels(y_test))


def random_affine(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    max_degrees: float = 12.0,
    max_scale: float = 0.1,
    max_shift_px: float = 1.0,
) -> torch.Tensor:
    """Independent small rotation, zoom and sub-pixel shift per image (bilinear, zero padding)."""
    n, side = x.size(0), x.size(-1)

    def uniform() -> torch.Tensor:  # one value per image in [-1, 1)
        return torch.rand(n, generator=generator) * 2 - 1

    angle = uniform() * math.radians(max_degrees)
    scale = 1 + uniform() * max_scale
    # affine_grid works in normalized coordinates where the image spans [-1, 1]: one pixel = 2 / side.
    shift = torch.stack([uniform(), uniform()], dim=1) * max_shift_px * 2 / side
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], dim=1), torch.stack([sin, cos, shift[:, 1]], dim=1)], dim=1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def shuffled_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled mini-batches; the last one may be smaller (like a DataLoader)."""
    order = torch.randperm(x.size(0), generator=generator)
    for start in range(0, x.size(0), batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return -(-num_examples // batch_size)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in eval mode (BatchNorm uses running statistics); restores the previous mode."""
    was_training = model.training
    model.eval()
    correct = (model(x).argmax(dim=1) == y).sum().item()
    model.train(was_training)
    return correct / y.numel()
