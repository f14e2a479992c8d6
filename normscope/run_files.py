"""Which existing files hold a training run's data, so that nothing normscope writes lands on one.

An output path given by mistake (a tab completion one file too far, a tracker pointed at a
checkpoint) would otherwise replace a checkpoint the user cannot make again. A file counts when its
name says it is a checkpoint, or when the readers' own sniffers claim it (a renamed checkpoint, a
tracker log, TensorBoard events).
"""

from __future__ import annotations

import os
from pathlib import Path

from normscope.errors import BadInputError

# What `run_data_in` says a file holds, as the words of the refusal.
CHECKPOINT = "a checkpoint"
TRAINING_LOG = "a training log"
RUN_FILE = "a file the run is read from"

# Names of the files a run is read from besides its checkpoints (its order, its model's config,
# its shard maps): an output written over one would change what the run says.
_RUN_FILE_NAMES = ("trainer_state.json", "config.json", "latest", ".metadata")
_CHECKPOINT_ENDINGS = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".distcp", ".index.json")


def run_data_in(path: Path) -> str | None:
    """What of a training run the existing file `path` holds (`CHECKPOINT`, `TRAINING_LOG`,
    `RUN_FILE`); None for a new file or one of normscope's own outputs."""
    # lazy: the readers' sniffers import the sources and numpy, which `--help` does not need
    from normscope.live.log import is_jsonl_log
    from normscope.sources._torchio import sniff_torch_file
    from normscope.sources.safetensors_files import sniff_safetensors_file
    from normscope.sources.tensorboard_log import has_event_files

    if not path.is_file():
        return None
    name, where = path.name.lower(), os.fspath(path)
    try:
        if name.endswith(_CHECKPOINT_ENDINGS) or sniff_torch_file(where) or sniff_safetensors_file(where):
            return CHECKPOINT
        if has_event_files(path) or is_jsonl_log(path):
            return TRAINING_LOG
    except (OSError, BadInputError):  # unreadable: the write says why it cannot
        return None
    return RUN_FILE if name in _RUN_FILE_NAMES else None
