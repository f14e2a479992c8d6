"""ABEL in the training loop: an LR scheduler that decays when the weight norm bounces.

    scheduler = normscope.schedulers.ABEL(optimizer, model, decay_factor=0.1, total_epochs=200)
    for epoch in range(200):
        train_one_epoch(...)
        scheduler.step()          # once per epoch, after the optimizer steps

Each `step()` measures the squared total norm of the watched tensors (one batched `torch._foreach_norm`
per device, accumulated in float64, one host sync per device) and feeds it to the same rule the
offline replay uses (`normscope.analysis.abel_rule.abel_step`). The norm is also measured once at
construction (epoch 0), as the offline replay sees an epoch-0 checkpoint when the run saved one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from normscope.analysis.abel_rule import (
    EVENT_DECAY,
    AbelState,
    abel_step,
    final_decay_epoch,
)
from normscope.analysis.epochs import DEFAULT_KINDS, parse_kinds
from normscope.trajectory import kind_of

# Attributes that are not state: the optimizer (LRScheduler leaves it out itself) and the watched tensors.
_NOT_STATE = ("optimizer", "_watched")


def watched_tensors(
    model_or_params: torch.nn.Module | Iterable[torch.Tensor], include_kinds: tuple[str, ...] | str = DEFAULT_KINDS
) -> list[torch.Tensor]:
    """A module's parameters of the given kinds (default: weight matrices/kernels, as offline), or
    exactly the tensors given."""
    if isinstance(model_or_params, torch.nn.Module):
        kinds = parse_kinds(include_kinds)
        return [p for name, p in model_or_params.named_parameters() if kind_of(name, tuple(p.shape)) in kinds]
    return [p for p in model_or_params]


def squared_total_norm(tensors: list[torch.Tensor]) -> float:
    """Σ |w|², one `_foreach_norm` launch group and one host sync per device, float64 accumulation."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        by_device.setdefault(t.device, []).append(t.detach())
    total = 0.0
    for group in by_device.values():
        norms = torch._foreach_norm(group, 2, dtype=torch.float64)
        total += float(torch.stack(norms).square().sum().item())
    return total


class ABEL(LRScheduler):
    """Decay every param group's LR by `decay_factor` when the weight norm bounces (Lewkowycz 2021).

    Args:
        optimizer: the wrapped optimizer.
        model_or_params: a module (its tensors of `include_kinds` are watched) or the tensors to watch.
        decay_factor: multiplies the LR at each decay (the paper reuses the reference schedule's, 0.1–0.2).
        min_lr: no group's LR is decayed below this.
        total_epochs: the budget; when given, one extra decay happens after epoch
            round(`final_fraction`·total_epochs), as in the paper.
        include_kinds: which kinds of a module's parameters enter the norm ("weight", "norm", "bias", ...).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model_or_params: torch.nn.Module | Iterable[torch.Tensor],
        decay_factor: float = 0.1,
        min_lr: float = 0.0,
        total_epochs: int | None = None,
        final_fraction: float = 0.85,
        include_kinds: tuple[str, ...] | str = DEFAULT_KINDS,
        last_epoch: int = -1,
    ) -> None:
        if not 0 < decay_factor < 1:
            raise ValueError(f"decay_factor must be in (0, 1), got {decay_factor}")
        self._watched = watched_tensors(model_or_params, include_kinds)
        if not self._watched:
            raise ValueError("ABEL watches no tensors: the model has none of the requested kinds")
        self.decay_factor = float(decay_factor)
        self.min_lr = float(min_lr)
        self.total_epochs = total_epochs
        self.final_epoch = None if total_epochs is None else final_decay_epoch(total_epochs, final_fraction)
        self.rule: dict[str, Any] = AbelState().to_dict()
        self.norm_history: list[float] = []
        self.decay_epochs: list[int] = []
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # called by step() exactly once per epoch, after last_epoch += 1
        norm_sq = squared_total_norm(self._watched)
        state, event = abel_step(AbelState.from_dict(self.rule), norm_sq)
        self.rule = state.to_dict()
        self.norm_history.append(norm_sq)
        decay = event == EVENT_DECAY or (self.final_epoch is not None and self.last_epoch == self.final_epoch)
        lrs = [float(group["lr"]) for group in self.optimizer.param_groups]
        if not decay:
            return lrs
        self.decay_epochs.append(self.last_epoch)
        return [max(lr * self.decay_factor, min(lr, self.min_lr)) for lr in lrs]

    def state_dict(self) -> dict[str, Any]:
        """Everything but the optimizer and the watched tensors; plain Python values (weights_only-safe)."""
        return {k: v for k, v in self.__dict__.items() if k not in _NOT_STATE}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update({k: v for k, v in state_dict.items() if k not in _NOT_STATE})
