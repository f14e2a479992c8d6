"""A Lightning `Callback` that logs weight dynamics with `normscope.track`.

    trainer = Trainer(callbacks=[NormscopeCallback("logs/track.jsonl", every=10)])

Works with `lightning.pytorch` or the older `pytorch_lightning` package, whichever is installed.
Only the global-zero process writes. Records carry `trainer.global_step` as step (so a resumed fit
continues its numbering) and the fractional epoch after the step, `current_epoch + (batch_idx + 1)
/ num_training_batches` (the last step of the first epoch is 1.0, as checkpoints count it). Gradients are measured after
Lightning's closure (backward, `on_before_optimizer_step`, gradient clipping) and before the update.
"""

from __future__ import annotations

import math
import os
from typing import Any

from normscope.errors import BadInputError

try:
    from lightning.pytorch import Callback
except ImportError:
    try:
        from pytorch_lightning import Callback
    except ImportError:
        raise ImportError("normscope's Lightning callback needs pytorch-lightning: "
                          "pip install 'normscope[lightning]'") from None

from normscope.live.tracker import Tracker, track


class NormscopeCallback(Callback):
    def __init__(self, path: str | os.PathLike[str], every: int = 1, run_id: str | None = None,
                 optimizer_index: int = 0) -> None:
        self.path = path
        self.every = every
        self.run_id = run_id
        self.optimizer_index = optimizer_index
        self.tracker: Tracker | None = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        optimizers = trainer.optimizers
        if self.optimizer_index >= len(optimizers):
            raise BadInputError(f"NormscopeCallback: optimizer_index {self.optimizer_index} but the "
                                f"trainer has {len(optimizers)} optimizer(s)")
        # names as normscope's checkpoint sources give them: Lightning's `model.` prefix dropped
        # when every parameter has it
        self.tracker = track(pl_module, optimizers[self.optimizer_index], self.path,
                             every=self.every, run_id=self.run_id, step=trainer.global_step,
                             common_prefix="model.")

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.tracker is None:
            return
        per_epoch = trainer.num_training_batches
        if isinstance(per_epoch, (int, float)) and 0 < per_epoch < math.inf:
            self.tracker.set_epoch(trainer.current_epoch + (batch_idx + 1) / per_epoch)
        else:  # an iterable dataset of unknown length
            self.tracker.set_epoch(float(trainer.current_epoch))

    def _close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._close()
