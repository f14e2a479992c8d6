"""The frameworks' checkpoint savers where the framework itself cannot be installed beside this
torch: each reproduces what the saver writes, following the framework's source.

- torchvision's classification reference recipe (references/classification/train.py, utils.py):
  `set_weight_decay` splits parameters into "other", "norm" and custom-key groups, walking each
  module's own parameters and then its children; each epoch saves one dict as `model_<epoch>.pth`
  and again as `checkpoint.pth`, with `args` an argparse.Namespace.
- timm's `CheckpointSaver` (timm/utils/checkpoint_saver.py): saves to `tmp.pth.tar`, replaces
  `last.pth.tar` with it, then hard-links `checkpoint-<epoch>.pth.tar` (and `model_best.pth.tar`
  on a better metric) to `last`.
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn

NORM_CLASSES = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)


def torchvision_param_groups(
    model: nn.Module, weight_decay: float, norm_weight_decay: float | None,
    custom_keys_weight_decay: list[tuple[str, float]] | None = None,
) -> list[dict]:
    params: dict[str, list] = {"other": [], "norm": []}
    decay_of: dict[str, float | None] = {"other": weight_decay, "norm": norm_weight_decay}
    custom_keys = []
    for key, wd in custom_keys_weight_decay or []:
        params[key] = []
        decay_of[key] = wd
        custom_keys.append(key)

    def add(module: nn.Module, prefix: str = "") -> None:
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            for key in custom_keys:
                target = f"{prefix}.{name}" if prefix != "" and "." in key else name
                if key == target:
                    params[key].append(p)
                    break
            else:
                if norm_weight_decay is not None and isinstance(module, NORM_CLASSES):
                    params["norm"].append(p)
                else:
                    params["other"].append(p)
        for child_name, child in module.named_children():
            add(child, f"{prefix}.{child_name}" if prefix != "" else child_name)

    add(model)
    return [{"params": params[k], "weight_decay": decay_of[k]} for k in params if params[k]]


def torchvision_checkpoint(model, optimizer, scheduler, epoch, args) -> dict:  # type: ignore[no-untyped-def]
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict(), "epoch": epoch, "args": args}  # fmt: skip


def save_torchvision_epoch(out: str, checkpoint: dict) -> None:
    torch.save(checkpoint, os.path.join(out, f"model_{checkpoint['epoch']}.pth"))
    torch.save(checkpoint, os.path.join(out, "checkpoint.pth"))


class TimmSaver:
    """`CheckpointSaver.save_checkpoint(epoch, metric)` as timm writes it (hard links)."""

    def __init__(self, model, optimizer, args, out: str) -> None:  # type: ignore[no-untyped-def]
        self.model, self.optimizer, self.args, self.out = model, optimizer, args, out
        self.best: float | None = None
        self.files: list[tuple[str, float | None]] = []

    def _save(self, path: str, epoch: int, metric: float | None) -> None:
        state = {"epoch": epoch, "arch": self.args.model, "optimizer": self.optimizer.state_dict(),
                 "version": 2, "args": self.args, "state_dict": self.model.state_dict()}  # fmt: skip
        if metric is not None:
            state["metric"] = metric
        state["saver"] = {"checkpoint_files": [(os.path.basename(f), m) for f, m in self.files],
                          "best_epoch": None, "best_metric": self.best, "pending": (epoch, metric)}  # fmt: skip
        torch.save(state, path)

    def _duplicate(self, src: str, dst: str) -> None:
        if os.path.exists(dst):
            os.unlink(dst)
        os.link(src, dst)

    def save_checkpoint(self, epoch: int, metric: float | None = None) -> None:
        tmp, last = os.path.join(self.out, "tmp.pth.tar"), os.path.join(self.out, "last.pth.tar")
        self._save(tmp, epoch, metric)
        if os.path.exists(last):
            os.unlink(last)
        os.replace(tmp, last)
        path = os.path.join(self.out, f"checkpoint-{epoch}.pth.tar")
        self._duplicate(last, path)
        self.files.append((path, metric))
        if metric is not None and (self.best is None or metric < self.best):
            self.best = metric
            self._duplicate(last, os.path.join(self.out, "model_best.pth.tar"))


def namespace(**values) -> argparse.Namespace:  # type: ignore[no-untyped-def]
    return argparse.Namespace(**values)
