"""A Hugging Face `TrainerCallback` that logs weight dynamics with `normscope.track`.

    trainer = Trainer(..., callbacks=[NormscopeTrainerCallback(every=10)])

The log goes to `path`, by default `{args.output_dir}/normscope_track.jsonl`. Only the main process
writes. Records carry `state.global_step` as step and, as epoch, the Trainer's fractional
`state.epoch` as the step begins (the Trainer advances it only after the update). The Trainer clips gradients before `optimizer.step()`, so |g| is the clipped gradient.
"""

from __future__ import annotations

import os
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError:
    raise ImportError("normscope's Trainer callback needs transformers: "
                      "pip install 'normscope[hf]'") from None

from normscope.errors import BadInputError
from normscope.tracker import Tracker, track

DEFAULT_LOG_NAME = "normscope_track.jsonl"


class NormscopeTrainerCallback(TrainerCallback):
    def __init__(self, path: str | os.PathLike[str] | None = None, every: int = 1,
                 run_id: str | None = None) -> None:
        self.path = path
        self.every = every
        self.run_id = run_id
        self.tracker: Tracker | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        if model is None or optimizer is None:
            raise BadInputError("NormscopeTrainerCallback: the Trainer passed no model/optimizer")
        path = self.path or os.path.join(args.output_dir, DEFAULT_LOG_NAME)
        self.tracker = track(model, optimizer, path, every=self.every, run_id=self.run_id,
                             step=state.global_step)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.tracker is not None:
            self.tracker.set_epoch(state.epoch)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.tracker is not None:
            self.tracker.close()
