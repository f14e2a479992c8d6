"""A Hugging Face `TrainerCallback` that logs weight dynamics with `normscope.track`.

    trainer = Trainer(..., callbacks=[NormscopeTrainerCallback(every=10)])

The log goes to `path`, by default `{args.output_dir}/normscope_track.jsonl`. Only the main process
writes. Records carry `state.global_step` as step and the Trainer's fractional epoch *after* the
step (as checkpoints and `trainer_state.json` count it: the last step of the first epoch is 1.0);
the Trainer advances `state.epoch` only after the update, so the adapter adds one step's share. The Trainer clips gradients before `optimizer.step()`, so |g| is the clipped gradient.
"""

from __future__ import annotations

import math
import os
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError:
    raise ImportError("normscope's Trainer callback needs transformers: "
                      "pip install 'normscope[hf]'") from None

from normscope.errors import BadInputError
from normscope.live.tracker import Tracker, track

DEFAULT_LOG_NAME = "normscope_track.jsonl"


class NormscopeTrainerCallback(TrainerCallback):
    def __init__(self, path: str | os.PathLike[str] | None = None, every: int = 1,
                 run_id: str | None = None) -> None:
        self.path = path
        self.every = every
        self.run_id = run_id
        self.tracker: Tracker | None = None
        self._epochs_per_step = 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       optimizer: Any = None, train_dataloader: Any = None,
                       **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        if model is None or optimizer is None:
            raise BadInputError("NormscopeTrainerCallback: the Trainer passed no model/optimizer")
        try:
            self._epochs_per_step = args.gradient_accumulation_steps / len(train_dataloader)
        except (TypeError, ZeroDivisionError):  # an iterable dataset: no length, epoch as it begins
            self._epochs_per_step = 0.0
        path = self.path or os.path.join(args.output_dir, DEFAULT_LOG_NAME)
        self.tracker = track(model, optimizer, path, every=self.every, run_id=self.run_id,
                             step=state.global_step)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.tracker is not None and state.epoch is not None:
            after = state.epoch + self._epochs_per_step
            self.tracker.set_epoch(min(after, math.floor(state.epoch + 1e-9) + 1.0))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.tracker is not None:
            self.tracker.close()
