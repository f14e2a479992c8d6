"""Run (1): the BatchNorm CNN trained with SGD + momentum + weight decay + augmentation, one plain
``torch.save`` checkpoint per epoch (``epoch_000.pt`` is the initialization)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from sample_runs.digits import (
    DigitsSplit,
    accuracy,
    load_digits_split,
    random_affine,
    shuffled_batches,
    steps_per_epoch,
)
from sample_runs.models import bn_cnn


@dataclass(frozen=True)
class SGDRunConfig:
    epochs: int = 60
    lr: float = 0.2
    weight_decay: float = 1e-3
    momentum: float = 0.9
    batch_size: int = 64
    decay_epochs: tuple[int, ...] = (45,)  # MultiStepLR milestones, counted in epochs (75 %)
    decay_factor: float = 0.1
    augment: bool = True
    seed: int = 0


@dataclass
class EpochRecord:
    """What was measured at the end of one epoch (epoch 0 = before training)."""

    epoch: int
    step: int
    lr: float  # the LR the epoch was trained with (NaN for epoch 0)
    train_loss: float  # mean over the epoch's batches, with augmentation (NaN for epoch 0)
    test_accuracy: float
    weight_norm_sq: float  # Σ |w|² over conv/linear weights (ndim > 1), float64


@dataclass
class SGDRunResult:
    config: SGDRunConfig
    steps_per_epoch: int
    num_params: int
    seconds: float
    epochs: list[EpochRecord] = field(default_factory=list)


def weight_norm_sq(state_dict: dict[str, torch.Tensor]) -> float:
    """Σ |w|² over the conv kernels and linear matrices (tensors with ndim > 1), in float64."""
    return sum(float(t.double().square().sum()) for t in state_dict.values() if t.ndim > 1)


@dataclass
class SeededTraining:
    """The model, optimizer and random generators of one run, made in the order the committed
    runs made them (so every caller draws the same numbers)."""

    model: torch.nn.Module
    opt: torch.optim.SGD
    batch_gen: torch.Generator
    augment_gen: torch.Generator


def seeded_training(config: SGDRunConfig) -> SeededTraining:
    torch.manual_seed(config.seed)  # model initialization
    model = bn_cnn()
    batch_gen = torch.Generator().manual_seed(config.seed + 1)
    augment_gen = torch.Generator().manual_seed(config.seed + 2)
    opt = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    return SeededTraining(model, opt, batch_gen, augment_gen)


def train_epoch(
    run: SeededTraining,
    data: DigitsSplit,
    config: SGDRunConfig,
    before_batch: Callable[[int], None] | None = None,
) -> list[float]:
    """One epoch of minibatch SGD; the training loss of each batch. `before_batch(i)` is called
    before batch i (the live run sets the tracker's epoch there)."""
    run.model.train()
    losses = []
    batches = shuffled_batches(data.train_x, data.train_y, config.batch_size, run.batch_gen)
    for i, (x, y) in enumerate(batches):
        if before_batch is not None:
            before_batch(i)
        if config.augment:
            x = random_affine(x, run.augment_gen)
        loss = F.cross_entropy(run.model(x), y)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        losses.append(loss.item())
    return losses


def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:03d}.pt"


def train_sgd_run(out_dir: Path, config: SGDRunConfig, data: DigitsSplit | None = None) -> SGDRunResult:
    """Train and write ``out_dir/epoch_NNN.pt`` for every epoch including 0. Deterministic on CPU for
    a given torch version and thread count (all randomness comes from seeded generators)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = data if data is not None else load_digits_split()
    run = seeded_training(config)
    model, opt = run.model, run.opt
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=list(config.decay_epochs), gamma=config.decay_factor
    )
    result = SGDRunResult(
        config=config,
        steps_per_epoch=steps_per_epoch(data.train_x.size(0), config.batch_size),
        num_params=sum(p.numel() for p in model.parameters()),
        seconds=0.0,
    )
    start = time.perf_counter()
    step = 0
    for epoch in range(config.epochs + 1):
        lr, loss_mean = float("nan"), float("nan")
        if epoch > 0:
            lr = opt.param_groups[0]["lr"]
            losses = train_epoch(run, data, config)
            step += len(losses)
            sched.step()  # as most scripts do: so the saved optimizer already holds the next epoch's LR
            loss_mean = sum(losses) / len(losses)
        record = EpochRecord(
            epoch=epoch,
            step=step,
            lr=lr,
            train_loss=loss_mean,
            test_accuracy=accuracy(model, data.test_x, data.test_y),
            weight_norm_sq=weight_norm_sq(model.state_dict()),
        )
        result.epochs.append(record)
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch,
                "step": step,
                "lr": lr,
                "train_loss": loss_mean,
                "test_accuracy": record.test_accuracy,
                "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
            },
            out_dir / checkpoint_name(epoch),
        )
    result.seconds = time.perf_counter() - start
    return result
