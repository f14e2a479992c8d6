"""What the commands share when they read and analyze a run: `RunOptions`, apart from the runner,
so that a command that only reads a run (`analyze -f csv`) imports no analysis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from normscope.errors import BadInputError

if TYPE_CHECKING:  # pragma: no cover
    from normscope.analysis.equilibrium import HyperparamOverrides
    from normscope.trajectory import Trajectory


@dataclass(frozen=True)
class RunOptions:
    """What the commands share: which tensors and snapshots to read, where, and what the run's
    checkpoints do not say (epochs, budget, model, hyper-parameters)."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    every: int = 1
    device: str = "auto"
    steps_per_epoch: float | None = None
    # each checkpoint file is one epoch: numbered 1..N in the run's time order (`--one-file-per-epoch`)
    one_file_per_epoch: bool = False
    total_epochs: int | None = None
    # tensor kinds in the total norm of the bounce analysis and the recommendation (None: weight)
    kinds: tuple[str, ...] | None = None
    base_lr: float | None = None  # the recommendation's base LR (None: the largest LR recorded)
    decay_factor: float = 0.1  # the recommendation's LR multiplier at each decay
    min_lr: float = 0.0  # the recommendation never decays below this LR
    texp: bool = False  # also Li & Arora's tapered-exponential equivalent of the recommended schedule
    recent: int = 5  # the live view's averages (cos(w,g), angle) are over this many latest records
    model_spec: str | None = None  # "package.module:factory": imports and runs the user's code
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float | None = None
    beta1: float | None = None
    probe: bool = True  # numerical homogeneity probe for the invariance verdicts (needs --model)

    def __post_init__(self) -> None:
        if self.one_file_per_epoch and self.steps_per_epoch is not None:
            raise BadInputError("give --one-file-per-epoch or --steps-per-epoch, not both: one numbers the "
                                "files as epochs, the other divides their steps")

    def hyperparam_overrides(self, trajectory: Trajectory) -> HyperparamOverrides:
        """The equilibrium analysis's overrides for this run. Which LR governs an interval depends on
        the source: a tracker record holds the LR its own step used; a checkpoint usually the next
        epoch's (the scheduler stepped before the save)."""
        from normscope.analysis.equilibrium import HyperparamOverrides  # lazy: the analyses, once one runs

        return HyperparamOverrides(optimizer=self.optimizer, lr=self.lr, weight_decay=self.weight_decay,
                                   momentum=self.momentum, beta1=self.beta1,
                                   steps_per_epoch=self.steps_per_epoch,
                                   lr_at="end" if trajectory.layout == "jsonl" else "start")


__all__ = ["RunOptions"]
