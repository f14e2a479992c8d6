"""PyTorch Lightning `.ckpt` files: `model.` prefix, optimizer_states, last.ckpt de-duplication."""

from __future__ import annotations

import argparse
import os

import pytest
import torch
from _sources_helpers import sgd, small_cnn, train

from normscope.errors import UnsafeCheckpointError
from normscope.snapshot import ORDER_EMBEDDED
from normscope.sources import open_run


def _lightning_payload(model, opt, epoch, step, hparams=None):  # type: ignore[no-untyped-def]
    """The top-level layout Lightning 2.x writes (see the real-Lightning test below)."""
    return {
        "epoch": epoch,
        "global_step": step,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "loops": {
            "fit_loop": {
                "state_dict": {},
                "epoch_progress": {"current": {"completed": epoch}},
            }
        },
        "callbacks": {
            "ModelCheckpoint{}": {"best_model_score": None, "dirpath": "/ckpts"}
        },
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": hparams if hparams is not None else {"lr": 0.05},
    }


def _write_checkpoints(root, epochs=3, steps_per_epoch=4):  # type: ignore[no-untyped-def]
    model = small_cnn()
    opt = sgd(model)
    for epoch in range(epochs):
        train(model, opt, steps_per_epoch, seed=epoch)
        step = (epoch + 1) * steps_per_epoch
        torch.save(
            _lightning_payload(model, opt, epoch, step),
            root / f"epoch={epoch}-step={step}.ckpt",
        )
    # ModelCheckpoint(save_last=True) writes a copy of the newest checkpoint, and -v1 re-saves
    torch.save(
        _lightning_payload(model, opt, epochs - 1, epochs * steps_per_epoch),
        root / "last.ckpt",
    )
    torch.save(
        _lightning_payload(model, opt, epochs - 1, epochs * steps_per_epoch),
        root / "last-v1.ckpt",
    )
    return model, opt


def test_lightning_directory(tmp_path):
    model, opt = _write_checkpoints(tmp_path)
    run = open_run(tmp_path)
    assert run.layout == "lightning" and run.ordering == ORDER_EMBEDDED
    assert [(s.meta.step, s.meta.epoch) for s in run.snapshots] == [
        (4, 0.0),
        (8, 1.0),
        (12, 2.0),
    ]
    assert [os.path.basename(s.meta.path) for s in run.snapshots][
        -1
    ] == "epoch=2-step=12.ckpt"
    assert sum("skipped last" in w for w in run.warnings) == 2
    last = run.snapshots[-1]
    # the LightningModule's `model.` attribute prefix is gone (every key had it)
    assert set(last.tensors) == {
        k for k, v in model.state_dict().items() if v.is_floating_point()
    }
    assert last.meta.optimizer == "SGD" and last.meta.param_groups[0].momentum == 0.9
    buf = last.optimizer_state["4.weight"]["momentum_buffer"].load()
    assert torch.equal(buf, opt.state[model[4].weight]["momentum_buffer"])


def test_last_ckpt_alone_is_kept(tmp_path):
    model = small_cnn()
    opt = sgd(model)
    train(model, opt, 1)
    torch.save(_lightning_payload(model, opt, 0, 1), tmp_path / "epoch=0-step=1.ckpt")
    torch.save(
        _lightning_payload(model, opt, 1, 2), tmp_path / "last.ckpt"
    )  # newer than the rest
    run = open_run(tmp_path)
    assert [s.meta.step for s in run.snapshots] == [1, 2]


def test_hyper_parameters_holding_objects_are_refused_by_name(tmp_path):
    model = small_cnn()
    opt = sgd(model)
    payload = _lightning_payload(
        model, opt, 0, 1, hparams={"args": argparse.Namespace(lr=0.1)}
    )
    torch.save(payload, tmp_path / "epoch=0-step=1.ckpt")
    with pytest.raises(UnsafeCheckpointError, match="argparse.Namespace"):
        open_run(tmp_path)


@pytest.mark.slow
def test_real_lightning_trainer_checkpoints(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")
    from torch.utils.data import DataLoader, TensorDataset

    class Module(pl.LightningModule):
        def __init__(self, lr: float = 0.05) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.model = torch.nn.Sequential(
                torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1)
            )

        def training_step(self, batch, _index):  # type: ignore[no-untyped-def]
            x, y = batch
            return ((self.model(x) - y) ** 2).mean()

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)

    torch.manual_seed(0)
    data = DataLoader(
        TensorDataset(torch.randn(32, 4), torch.randn(32, 1)), batch_size=8
    )
    checkpoint = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path, save_top_k=-1, save_last=True
    )
    trainer = pl.Trainer(max_epochs=2, callbacks=[checkpoint], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")  # fmt: skip
    trainer.fit(Module(), data)
    run = open_run(tmp_path)
    assert run.layout == "lightning"
    assert [s.meta.step for s in run.snapshots] == [4, 8]
    assert (
        "0.weight" in run.snapshots[0].tensors and "2.bias" in run.snapshots[0].tensors
    )
    assert set(run.snapshots[-1].optimizer_state) == {
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "2.weight",
        "2.bias",
    }


def test_lightning_epochs_count_completed_epochs_like_other_layouts(lightning_run_dir):
    # Lightning stores the 0-based epoch in progress; an end-of-epoch save has completed one more.
    from normscope.sources import open_run

    run = open_run(lightning_run_dir)
    assert [s.meta.epoch for s in run.snapshots] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert [s.meta.step for s in run.snapshots] == [23, 46, 69, 92, 115]
