"""Hugging Face Trainer output: `checkpoint-N/` directories, or one of them.

Each holds model weights (`model.safetensors`, a sharded index, or `pytorch_model.bin`),
`optimizer.pt` and `trainer_state.json` (`global_step`, fractional `epoch`). `training_args.bin`
is a pickled arbitrary object and is never opened.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, ClassVar

from normscope.errors import BadInputError
from normscope.file_stamps import merge_stamps, stamp_path
from normscope.snapshot import Run

from normscope import _json
from ._assemble import build_run
from ._bounds import check_declared
from ._files import label_of, subdirs_in
from ._hf_order import ordered_names
from ._optimizer import read_optimizer
from ._ordering import PendingSnapshot
from ._refs import SafetensorsHandles
from ._torchio import load_torch_file
from .safetensors_files import read_index, read_safetensors_snapshot
from .torch_files import as_ref, pending_from_parts, read_torch_checkpoint

TRAINER_STATE = "trainer_state.json"
_WEIGHT_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
    "adapter_model.safetensors",
)


def _weights_file(directory: str) -> str | None:
    return next(
        (
            os.path.join(directory, n)
            for n in _WEIGHT_FILES
            if os.path.isfile(os.path.join(directory, n))
        ),
        None,
    )


def is_checkpoint_dir(directory: str) -> bool:
    return (
        os.path.isfile(os.path.join(directory, TRAINER_STATE))
        or _weights_file(directory) is not None
    )


def _trainer_state(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, TRAINER_STATE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            state = _json.loads(f.read(), non_finite=True)
    except PermissionError:
        raise BadInputError(f"cannot read {path}: permission denied") from None
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{path} is not valid JSON: {exc}") from None
    return state if isinstance(state, dict) else {}


def _read_sharded_bin(
    index: str, label: str, warnings: list[str], recover_unsafe: bool
) -> PendingSnapshot:
    """`pytorch_model.bin.index.json`: every shard is a weights_only torch file."""
    merged: dict[str, Any] = {}
    shards = read_index(index)
    before = tuple(stamp for shard in shards for stamp in stamp_path(shard))  # before mapping
    for shard in shards:
        tensors = load_torch_file(shard, recover_unsafe=recover_unsafe, notes=warnings, refs=True)
        if not isinstance(tensors, dict):
            raise BadInputError(f"{shard} holds a {type(tensors).__name__}, not a state dict")
        merged.update(tensors)
    return pending_from_parts(index, label, merged, None, None, None, "", warnings,
                              files=merge_stamps(before, stamp_path(index)))  # fmt: skip


def read_checkpoint_dir(
    directory: str,
    label: str,
    warnings: list[str],
    *,
    recover_unsafe: bool = False,
    handles: SafetensorsHandles | None = None,
    parameter_order: tuple[str, ...] | None = None,
) -> PendingSnapshot:
    weights = _weights_file(directory)
    if weights is None:
        raise BadInputError(
            f"{directory} has no model weights (looked for {', '.join(_WEIGHT_FILES)})"
        )
    if weights.endswith(".safetensors.index.json"):
        pending = read_safetensors_snapshot(
            directory, label, read_index(weights), handles
        )
    elif weights.endswith(".safetensors"):
        pending = read_safetensors_snapshot(directory, label, {weights: []}, handles)
    elif weights.endswith(".bin.index.json"):
        pending = _read_sharded_bin(weights, label, warnings, recover_unsafe)
    else:
        pending = read_torch_checkpoint(
            weights, label, warnings, recover_unsafe=recover_unsafe
        )
    pending.path = directory
    state = _trainer_state(directory)
    step, epoch = state.get("global_step"), state.get("epoch")
    if isinstance(step, int) and not isinstance(step, bool) and step >= 0:
        pending.trainer_step = step
    if isinstance(epoch, (int, float)) and not isinstance(epoch, bool):
        try:
            value = float(epoch)
        except OverflowError:  # an integer past a float's range
            value = math.inf
        if math.isfinite(value):
            pending.trainer_epoch = value
    optimizer_path = os.path.join(directory, "optimizer.pt")
    if os.path.isfile(optimizer_path):
        before = stamp_path(optimizer_path)  # before it is mapped
        optimizer = load_torch_file(
            optimizer_path, recover_unsafe=recover_unsafe, notes=warnings, refs=True
        )
        pending.files = merge_stamps(pending.files, before)
        if isinstance(optimizer, dict):
            tensors = pending.tensors
            names, order_known = list(tensors), True
            if weights.endswith((".safetensors", ".safetensors.index.json")):
                # safetensors sorts its keys: the model's parameter order is gone, unless the
                # model's config can rebuild it
                names, order_known = ordered_names(directory, names, parameter_order)
            info = read_optimizer(
                optimizer,
                names,
                {n: tuple(r.shape) for n, r in tensors.items()},
                as_ref,
                label,
                order_known=order_known,
            )
            pending.optimizer, pending.param_groups = info.optimizer, info.param_groups
            pending.optimizer_state = info.state
            pending.hyperparams_source = f"{label}/optimizer.pt param_groups"
            warnings.extend(info.warnings)
    check_declared(directory, pending.tensors, pending.optimizer_state, pending.files)
    return pending


@dataclasses.dataclass(frozen=True)
class HFTrainerDirs:
    """A directory of `checkpoint-N/` subdirectories, or one checkpoint directory."""

    recover_unsafe: bool = False
    parameter_order: tuple[str, ...] | None = None  # the model's named_parameters(), if known
    name: ClassVar[str] = "hf-trainer"

    def sniff(self, path: str) -> bool:
        if not os.path.isdir(path):
            return False
        if os.path.isfile(os.path.join(path, TRAINER_STATE)):
            return True
        if os.path.isfile(os.path.join(path, "pytorch_model.bin.index.json")):
            return True  # a saved model sharded into .bin files: one snapshot, not one per shard
        return any(os.path.isfile(os.path.join(d, TRAINER_STATE)) or
                   (_weights_file(d) is not None) for d in subdirs_in(path))  # fmt: skip

    def open(self, path: str) -> Run:
        warnings: list[str] = []
        subdirs = [d for d in subdirs_in(path) if is_checkpoint_dir(d)]
        if not subdirs:
            dirs, root = [path], os.path.dirname(os.path.abspath(path))
        else:
            dirs, root = subdirs, path
            if _weights_file(path) is not None:
                warnings.append(
                    f"ignored the model saved at the top of {path} (usually the final or best model, "
                    "a copy of one checkpoint); analysing the checkpoint directories"
                )
        handles = (
            SafetensorsHandles()
        )  # one bounded set of open files for the whole run
        pending = [
            read_checkpoint_dir(
                d,
                label_of(d, root),
                warnings,
                recover_unsafe=self.recover_unsafe,
                handles=handles,
                parameter_order=self.parameter_order,
            )
            for d in dirs
        ]
        trainer = any(os.path.isfile(os.path.join(d, TRAINER_STATE)) for d in dirs)
        return build_run(path, self.name, pending, warnings,
                         framework="transformers Trainer" if trainer else "transformers")
