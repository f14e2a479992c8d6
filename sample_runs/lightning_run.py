"""Run (3): the BN CNN trained by a real ``pytorch_lightning.Trainer`` for a few epochs, checkpointed by
``ModelCheckpoint(save_top_k=-1, save_last=True)``: ``epoch=E-step=S.ckpt`` per epoch plus ``last.ckpt``.
Hyper-parameters are saved as plain numbers, so every file loads with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from sample_runs.digits import (
    DigitsSplit,
    load_digits_split,
    random_affine,
    steps_per_epoch,
)
from sample_runs.models import bn_cnn
from sample_runs.sgd_run import weight_norm_sq

LIGHTNING_RUN = "digits_bn_cnn_lightning"


@dataclass(frozen=True)
class LightningRunConfig:
    epochs: int = 5
    lr: float = 0.2
    weight_decay: float = 1e-3
    momentum: float = 0.9
    batch_size: int = 64
    decay_epochs: tuple[int, ...] = (4,)
    decay_factor: float = 0.1
    seed: int = 0


@dataclass
class LightningRunResult:
    config: LightningRunConfig
    steps_per_epoch: int
    num_params: int
    seconds: float
    checkpoints: list[str] = field(default_factory=list)  # per-epoch files in time order, then last.ckpt
    epochs: list[dict] = field(default_factory=list)  # "epoch" is Lightning's 0-based epoch index


def _require_lightning():
    try:
        import pytorch_lightning
    except ImportError as exc:
        raise ImportError(
            "the Lightning sample run needs pytorch-lightning: pip install 'normscope[lightning]'"
        ) from exc
    return pytorch_lightning


def train_lightning_run(
    out_dir: Path, config: LightningRunConfig, data: DigitsSplit | None = None
) -> LightningRunResult:
    pl = _require_lightning()
    from pytorch_lightning.callbacks import ModelCheckpoint

    class DigitsModule(pl.LightningModule):
        def __init__(
            self,
            lr: float,
            weight_decay: float,
            momentum: float,
            decay_epochs: list[int],
            decay_factor: float,
        ):
            super().__init__()
            self.save_hyperparameters()  # plain numbers and a list: safe for weights_only loading
            self.model = bn_cnn()  # state_dict keys get Lightning's usual "model." prefix
            self.augment_gen = torch.Generator().manual_seed(config.seed + 2)
            self.test_accuracy: list[float] = []
            self.epoch_lr: list[float] = []
            self.train_loss: list[float] = []

        def on_train_epoch_start(self) -> None:
            self.epoch_lr.append(self.trainer.optimizers[0].param_groups[0]["lr"])

        def on_train_epoch_end(self) -> None:
            self.train_loss.append(float(self.trainer.callback_metrics["train_loss"]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self(random_affine(x, self.augment_gen)), y)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_acc", (self(x).argmax(dim=1) == y).float().mean(), on_epoch=True)

        def on_validation_epoch_end(self) -> None:
            self.test_accuracy.append(float(self.trainer.callback_metrics["val_acc"]))

        def configure_optimizers(self):
            hp = self.hparams
            opt = torch.optim.SGD(
                self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
            )
            sched = torch.optim.lr_scheduler.MultiStepLR(
                opt, milestones=hp.decay_epochs, gamma=hp.decay_factor
            )
            return {"optimizer": opt, "lr_scheduler": sched}

    out_dir = Path(out_dir)
    data = data if data is not None else load_digits_split()
    pl.seed_everything(config.seed, verbose=False)
    module = DigitsModule(
        config.lr, config.weight_decay, config.momentum, list(config.decay_epochs), config.decay_factor
    )
    loader = torch.utils.data.DataLoader
    train = loader(
        torch.utils.data.TensorDataset(data.train_x, data.train_y),
        batch_size=config.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(config.seed + 1),
    )
    test = loader(torch.utils.data.TensorDataset(data.test_x, data.test_y), batch_size=len(data.test_y))
    checkpointing = ModelCheckpoint(dirpath=out_dir, save_top_k=-1, save_last=True)
    trainer = pl.Trainer(
        max_epochs=config.epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[checkpointing],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    start = time.perf_counter()
    trainer.fit(module, train, test)
    seconds = time.perf_counter() - start
    spe = steps_per_epoch(data.train_x.size(0), config.batch_size)
    per_epoch = [f"epoch={e}-step={(e + 1) * spe}.ckpt" for e in range(config.epochs)]
    epochs = []
    for epoch, name in enumerate(per_epoch):
        state = torch.load(out_dir / name, weights_only=True)["state_dict"]
        epochs.append(
            {
                "epoch": epoch,
                "step": (epoch + 1) * spe,
                "lr": module.epoch_lr[epoch],
                "train_loss": module.train_loss[epoch],
                "test_accuracy": module.test_accuracy[epoch],
                "weight_norm_sq": weight_norm_sq(state),
            }
        )
    return LightningRunResult(
        config=config,
        steps_per_epoch=spe,
        num_params=sum(p.numel() for p in module.parameters()),
        seconds=seconds,
        checkpoints=[*per_epoch, "last.ckpt"],
        epochs=epochs,
    )


def lightning_manifest_entry(result: LightningRunResult) -> dict:
    return {
        "layout": "lightning",
        "model": "sample_runs.models:bn_cnn",
        "optimizer": "SGD",
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(result.config).items()},
        "steps_per_epoch": result.steps_per_epoch,
        "num_params": result.num_params,
        "seconds": round(result.seconds, 1),
        "checkpoints": result.checkpoints,
        "epochs": result.epochs,
    }
