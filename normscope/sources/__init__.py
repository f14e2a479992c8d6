"""Turn what the user points at into an ordered `Run` of lazy snapshots.

Each layout is a small class with `name`, a cheap `sniff(path) -> bool` that looks at content
(magic bytes, JSON headers, directory contents) and `open(path) -> Run`. `open_run` asks them in
`LAYOUTS` order, most specific first; adding a source is one line in that tuple.
"""

from __future__ import annotations

import os
from typing import Protocol

from normscope._gc import collector_paused
from normscope.errors import BadInputError
from normscope.snapshot import Run

from ._assemble import subsample
from ._diagnose import named_as_checkpoint, why_unreadable
from ._files import check_exists, files_in, list_dir
from .accelerate_state import AccelerateStates
from .deepspeed_zero import DeepSpeedCheckpoints
from .dcp import DistributedCheckpoints
from .hf_trainer import HFTrainerDirs
from normscope.live.log import TrackerLogs
from .lightning import LightningCheckpoints
from .safetensors_files import SafetensorsFiles
from .tensorboard_log import TensorBoardEvents
from .torch_files import TorchFiles


class Layout(Protocol):
    name: str

    def sniff(self, path: str) -> bool: ...

    def open(self, path: str) -> Run: ...


def make_layouts(
    *, recover_unsafe: bool = False, parameter_order: tuple[str, ...] | None = None
) -> tuple[Layout, ...]:
    """The registry, most specific first: a Lightning .ckpt is also a torch file and an HF
    checkpoint directory also holds safetensors, so their sniffers must get the first look.
    `parameter_order` (the model's `named_parameters()` names) maps optimizer state where the
    weights file lost the order (safetensors)."""
    return (
        DistributedCheckpoints(),
        DeepSpeedCheckpoints(),  # its optimizer files need its globals: before the torch reader
        # accelerate's directories hold HF-named weights: before the Trainer's
        AccelerateStates(recover_unsafe=recover_unsafe, parameter_order=parameter_order),
        HFTrainerDirs(recover_unsafe=recover_unsafe, parameter_order=parameter_order),
        LightningCheckpoints(recover_unsafe=recover_unsafe),
        SafetensorsFiles(),
        TorchFiles(recover_unsafe=recover_unsafe),
        TrackerLogs(),  # after checkpoints: a run directory with both is analysed from its weights
        TensorBoardEvents(),  # last: event files sit beside checkpoints and carry only norms
    )


LAYOUTS = make_layouts()


def detect_layout(path: str, layouts: tuple[Layout, ...] = LAYOUTS) -> Layout:
    """The first layout whose sniffer claims `path`, or a one-line BadInputError saying why none did."""
    check_exists(path)
    if os.path.isdir(path) and not list_dir(path):
        raise BadInputError(f"{path} is an empty directory")
    for layout in layouts:
        if layout.sniff(path):
            return layout
    kinds = ", ".join(layout.name for layout in layouts)
    if os.path.isdir(path):
        raise BadInputError(f"no checkpoints found in {path} (looked for: {kinds}){_why_none(path)}")
    why = why_unreadable(path)
    raise BadInputError(
        f"{path} is not a checkpoint normscope can read: {why}" if why
        else f"{path} is not a checkpoint normscope can read (looked for: {kinds})"
    )


def _why_none(directory: str) -> str:
    """What is wrong with the first file of `directory` named as a checkpoint, as the end of the
    "no checkpoints found" line (empty if none is named so, or none shows what)."""
    named = [p for p in files_in(directory) if named_as_checkpoint(p)]
    for at, candidate in enumerate(named):
        why = why_unreadable(candidate)
        if why:
            more = len(named) - at - 1
            return f"; {os.path.basename(candidate)}: {why}" + (f" (and {more} more file(s) named so)" if more else "")
    return ""


def open_run(
    path: str | os.PathLike[str],
    *,
    every: int = 1,
    recover_unsafe: bool = False,
    tag_pattern: str | None = None,
    layouts: tuple[Layout, ...] | None = None,
    parameter_order: tuple[str, ...] | None = None,
) -> Run:
    """Open a checkpoint, a directory of checkpoints or of checkpoint directories, as one ordered run.

    `every=N` keeps every N-th snapshot in time order, always keeping the last one. Torch files
    that need globals beyond tensors are refused unless `recover_unsafe=True`, which reads their
    tensors with a restricted unpickler (nothing from the file runs; see `_restricted_torch`).
    `tag_pattern` says the path is TensorBoard event files whose per-layer norm tags match that
    regex, and reads it as such. `parameter_order`: the model's `named_parameters()` names, for
    optimizer state whose weights file does not keep the order (`--model`).
    """
    if every < 1:
        raise BadInputError(f"every must be at least 1, got {every}")
    path = os.fspath(path)
    if layouts is None:
        layouts = ((TensorBoardEvents(tag_pattern),) if tag_pattern is not None
                   else make_layouts(recover_unsafe=recover_unsafe,
                                     parameter_order=parameter_order))
    with collector_paused():
        layout = detect_layout(path, layouts)
        return subsample(layout.open(path), every)


__all__ = ["LAYOUTS", "Layout", "detect_layout", "make_layouts", "open_run"]
