"""Why a file that is named like a checkpoint is none that normscope can read.

No layout's sniffer claimed it, so the user would hear only "not a checkpoint" and the kinds looked
for. Its name says what it was meant to be; this says what its first bytes (or its size) show
instead, in words that fit after a colon in that one line. Reads a few bytes at most, changes
nothing.
"""

from __future__ import annotations

import os
import struct

from ._torchio import ZIP_MAGIC, is_pickle, neither_zip_nor_pickle, read_head
from .safetensors_files import MAX_HEADER_BYTES

_SAFETENSORS = (".safetensors",)
_TORCH = (".pt", ".pth", ".bin", ".ckpt")


_LOG = (".jsonl",)


def named_as_checkpoint(path: str) -> bool:
    """Named as a checkpoint or a tracker log: what a user pointing normscope at it meant it to be."""
    return path.lower().endswith(_SAFETENSORS + _TORCH + _LOG)


def why_unreadable(path: str) -> str | None:
    """What is wrong with `path`, a file named as a safetensors or torch file or a tracker log that
    no layout claimed; None if its name says none of them or nothing wrong shows in its first bytes."""
    if not named_as_checkpoint(path):
        return None
    try:
        size = os.path.getsize(path)
    except OSError:
        return None  # the readers say why, in their own words
    if size == 0:
        return "it is empty (0 bytes)"
    if path.lower().endswith(_SAFETENSORS):
        return _why_not_safetensors(path, size)
    if path.lower().endswith(_LOG):
        return "its first line is not a normscope tracker log's header"
    return _why_not_torch(path)


def _why_not_safetensors(path: str, size: int) -> str | None:
    head = read_head(path, 9)
    if len(head) < 9:
        return f"it is {size} bytes long, too short for a safetensors header"
    (length,) = struct.unpack("<Q", head[:8])
    if head[8:9] != b"{":
        return "its header does not start with a JSON object, so it is not a safetensors file"
    if length > size - 8:
        return (f"its header is said to be {length:,} bytes long, but the file holds {size - 8:,} "
                "after that length: cut short, or not a safetensors file")
    if length > MAX_HEADER_BYTES:
        return f"its header is said to be {length:,} bytes long, over the {MAX_HEADER_BYTES:,} safetensors allows"
    if length < 2:
        return f"its header is said to be {length} byte(s) long, too short for a JSON object"
    return None


def _why_not_torch(path: str) -> str | None:
    if read_head(path, 4) == ZIP_MAGIC or is_pickle(path):
        return None  # the torch reader's sniff decides those
    return neither_zip_nor_pickle(path)
