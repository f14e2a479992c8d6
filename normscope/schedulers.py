"""ABEL in the training loop: an LR scheduler that decays when the weight norm bounces.

    scheduler = normscope.schedulers.ABEL(optimizer, model, decay_factor=0.1, total_epochs=200)
    for epoch in range(200):
        train_one_epoch(...)
        scheduler.step()          # once per epoch, after the optimizer steps

Each `step()` measures the squared total norm of the watched tensors (one batched `torch._foreach_norm`
per device, accumulated in float64, one host sync per device) and feeds it to a decision rule. The
norm is also measured once at construction (epoch 0), as the offline replay sees an epoch-0
checkpoint when the run saved one. Rules:

* ``rule="robust"`` (default): the noise-aware bounce detector run online
  (`normscope.analysis.abel_online.robust_decay_due`): only the epochs seen so far, only the current
  LR phase, never within max(8, 2τ) epochs of the start or of the previous decay (τ the relaxation
  time at the current LR, from the optimizer's lr, weight decay and momentum/β1 and the optimizer
  steps counted per epoch).
* ``rule="exact"``: Algorithm 1 of the paper, step for step — the rule the offline replay
  (`normscope.analysis.abel_rule.abel_step`) uses; it fires on noise on a noisy plateau.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from normscope.analysis.abel_online import MIN_PHASE_EPOCHS, robust_decay_due
from normscope.analysis.abel_rule import (
    EVENT_DECAY,
    AbelState,
    abel_step,
    final_decay_epoch,
)
from normscope.analysis.epochs import DEFAULT_KINDS, parse_kinds
from normscope.analysis.theory import correlation_epochs
from normscope.trajectory import kind_of

# Attributes that are not state: the optimizer (LRScheduler leaves it out itself), the watched
# tensors and the handle of the hook that counts optimizer steps.
_NOT_STATE = ("optimizer", "_watched", "_step_hook")
RULE_ROBUST = "robust"
RULE_EXACT = "exact"


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
        rule: "robust" (default; noise-aware, causal, waits out relaxation times) or "exact" (the
            paper's sign-change rule).
        steps_per_epoch: optimizer steps per epoch for the relaxation time; counted from the
            optimizer's steps when not given.
        min_phase_epochs: the robust rule's shortest LR phase, in epochs.
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
        *,
        rule: str = RULE_ROBUST,
        steps_per_epoch: float | None = None,
        min_phase_epochs: int = MIN_PHASE_EPOCHS,
    ) -> None:
        if not 0 < decay_factor < 1:
            raise ValueError(f"decay_factor must be in (0, 1), got {decay_factor}")
        if rule not in (RULE_ROBUST, RULE_EXACT):
            raise ValueError(f"rule must be {RULE_ROBUST!r} or {RULE_EXACT!r}, got {rule!r}")
        self.rule_name = rule
        self.steps_per_epoch = steps_per_epoch
        self.min_phase_epochs = int(min_phase_epochs)
        self.optimizer_steps = 0
        self._step_hook = optimizer.register_step_post_hook(self._count_step)
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

    def _count_step(self, optimizer, args, kwargs) -> None:
        self.optimizer_steps += 1

    def relaxation_epochs(self) -> float | None:
        """The relaxation time at the current LR, in epochs (None without weight decay or steps)."""
        group = self.optimizer.param_groups[0]
        epochs = max(self.last_epoch, 1)
        spe = self.steps_per_epoch or (self.optimizer_steps / epochs if self.optimizer_steps else None)
        betas = group.get("betas")
        return correlation_epochs(
            type(self.optimizer).__name__, float(group["lr"]), float(group.get("weight_decay", 0.0)),
            float(group.get("momentum", 0.0) or 0.0), float(betas[0]) if betas else float("nan"),
            float(spe) if spe else float("nan"))

    def get_lr(self) -> list[float]:  # called by step() exactly once per epoch, after last_epoch += 1
        norm_sq = squared_total_norm(self._watched)
        state, event = abel_step(AbelState.from_dict(self.rule), norm_sq)
        self.rule = state.to_dict()
        self.norm_history.append(norm_sq)
        if self.rule_name == RULE_EXACT:
            bounce = event == EVENT_DECAY
        else:  # norm_history[0] is the construction-time norm, so index = completed epochs
            bounce = self.last_epoch > 0 and robust_decay_due(
                self.norm_history, self.decay_epochs, tau_epochs=self.relaxation_epochs(),
                min_phase_epochs=self.min_phase_epochs)
        decay = bounce or (self.final_epoch is not None and self.last_epoch == self.final_epoch)
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
