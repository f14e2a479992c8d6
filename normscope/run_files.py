"""Which existing files hold a training run's data, so that nothing normscope writes lands on one.

An output path given by mistake (a tab completion one file too far, a tracker pointed at a
checkpoint) would otherwise replace a checkpoint the user cannot make again.
"""

from __future__ import annotations

from pathlib import Path

# Names of the files a run is read from besides its checkpoints (its order, its model's config,
# its shard maps): an output written over one would change what the run says.
_RUN_FILE_NAMES = ("trainer_state.json", "config.json", "latest", ".metadata")
_RUN_FILE_ENDINGS = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".distcp", ".index.json")


def run_data_in(path: Path) -> str | None:
    """What of a training run the existing file `path` holds, in words ("a checkpoint", …); None
    for a new file or one of normscope's own outputs. By name, and by the first bytes for files
    renamed: zip (torch.save), pickle, a safetensors header, a tracker log's header."""
    try:
        if not path.is_file():
            return None
        with open(path, "rb") as f:
            head = f.read(96)
    except OSError:
        return None  # the write says why it cannot
    name = path.name.lower()
    zipped = head[:4] == b"PK\x03\x04"  # torch.save
    pickled = head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"  # a legacy torch file
    if name.endswith(_RUN_FILE_ENDINGS) or zipped or pickled:
        return "a checkpoint"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 2**32:
        return "a checkpoint"  # a safetensors header's length, then its JSON
    tracker = b'"schema":"normscope.track"' in head or b'"schema": "normscope.track"' in head
    if ".tfevents." in name or tracker:
        return "a training log"
    if name in _RUN_FILE_NAMES:
        return "a file the run is read from"
    return None
