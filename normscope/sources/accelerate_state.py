"""🤗 Accelerate `Accelerator.save_state` directories, one or a directory of them.

Each holds the model (`model.safetensors` or `pytorch_model.bin`; further models as `model_1…`),
the optimizer (`optimizer.bin`, a `torch.save` of its state_dict), the LR scheduler
(`scheduler.bin`) and `random_states_<rank>.pkl` / `custom_checkpoint_<i>.pkl`, which are
arbitrary pickles and never opened. With automatic naming the directories are
`checkpoints/checkpoint_<i>`: `i` counts saves, not steps. The step is the optimizer's own count
(Adam-family state keeps it per parameter), else the scheduler's `last_epoch`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, ClassVar

from normscope.errors import BadInputError
from normscope.file_reads import item
from normscope.file_stamps import merge_stamps, stamp_path
from normscope.snapshot import Run

from ._assemble import build_run
from ._bounds import check_declared
from ._files import label_of, subdirs_in
from ._hf_order import ordered_names
from ._optimizer import read_optimizer
from ._ordering import PendingSnapshot
from ._refs import SafetensorsHandles
from ._torchio import load_torch_file
from .safetensors_files import read_safetensors_snapshot
from .torch_files import as_ref, read_torch_checkpoint

OPTIMIZER = "optimizer.bin"
SCHEDULER = "scheduler.bin"
_MODELS = ("model.safetensors", "pytorch_model.bin")


def _model_file(directory: str) -> str | None:
    return next((os.path.join(directory, n) for n in _MODELS
                 if os.path.isfile(os.path.join(directory, n))), None)  # fmt: skip


def is_state_dir(directory: str) -> bool:
    """Model weights beside `optimizer.bin` and the files only `save_state` writes beside them."""
    if not (os.path.isdir(directory) and os.path.isfile(os.path.join(directory, OPTIMIZER))):
        return False
    if _model_file(directory) is None:
        return False
    names = os.listdir(directory)
    return SCHEDULER in names or any(
        n.startswith("random_states_") and n.endswith(".pkl") for n in names
    )


def state_dirs(path: str) -> tuple[list[str], str] | None:
    """(the save_state directories, the root their labels are relative to), or None."""
    if is_state_dir(path):
        return [path], os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(path):
        return None
    for base in (path, os.path.join(path, "checkpoints")):
        if os.path.isdir(base):
            dirs = [d for d in subdirs_in(base) if is_state_dir(d)]
            if dirs:
                return dirs, path
    return None


def _optimizer_step(state: Mapping[str, Mapping[str, Any]]) -> int | None:
    steps = [entry["step"] for entry in state.values() if "step" in entry]
    return int(max(steps)) if steps else None


def _scheduler_step(directory: str, warnings: list[str]) -> int | None:
    path = os.path.join(directory, SCHEDULER)
    if not os.path.isfile(path):
        return None
    try:
        scheduler = load_torch_file(path)
    except BadInputError as exc:
        warnings.append(f"{os.path.basename(directory)}/{SCHEDULER} not read: {exc}")
        return None
    last = scheduler.get("last_epoch") if isinstance(scheduler, Mapping) else None
    return last if isinstance(last, int) and not isinstance(last, bool) and last >= 0 else None


def read_state_dir(
    directory: str, label: str, warnings: list[str], *, recover_unsafe: bool,
    handles: SafetensorsHandles, parameter_order: tuple[str, ...] | None = None,
) -> PendingSnapshot:
    weights = _model_file(directory)
    assert weights is not None  # is_state_dir said so
    if weights.endswith(".safetensors"):
        pending = read_safetensors_snapshot(directory, label, {weights: []}, handles)
    else:
        pending = read_torch_checkpoint(weights, label, warnings, recover_unsafe=recover_unsafe)
    pending.path = directory
    pending.named = (None, None)  # `checkpoint_<i>` counts saves: only its order means something
    others = sorted(n for n in os.listdir(directory)
                    if n.startswith(("model_", "pytorch_model_")) and n not in _MODELS)  # fmt: skip
    if others:
        warnings.append(f"{label}: analysing the first model; also saved: {', '.join(others[:4])}")
    optimizer_path = os.path.join(directory, OPTIMIZER)
    before = stamp_path(optimizer_path)  # before it is mapped
    optimizer = load_torch_file(optimizer_path, recover_unsafe=recover_unsafe,
                                notes=warnings, refs=True)  # fmt: skip
    pending.files = merge_stamps(pending.files, before)
    if isinstance(optimizer, Mapping):
        tensors = pending.tensors
        names, order_known = list(tensors), True
        if weights.endswith(".safetensors"):  # sorted keys: the order only `--model` can give back
            names, order_known = ordered_names(directory, names, parameter_order)
        info = read_optimizer(optimizer, names, {n: tuple(r.shape) for n, r in tensors.items()},
                              as_ref, label, order_known=order_known)  # fmt: skip
        pending.optimizer, pending.param_groups = info.optimizer, info.param_groups
        pending.optimizer_state = info.state
        pending.hyperparams_source = f"{label}/{OPTIMIZER} param_groups"
        warnings.extend(info.warnings)
        state = optimizer.get("state")
        if pending.embedded_step is None and isinstance(state, Mapping):
            pending.embedded_step = _optimizer_step(
                {k: {"step": _as_number(v.get("step"))} for k, v in state.items()
                 if isinstance(v, Mapping) and _as_number(v.get("step")) is not None})  # fmt: skip
    if pending.embedded_step is None:
        pending.embedded_step = _scheduler_step(directory, warnings)
    check_declared(directory, pending.tensors, pending.optimizer_state, pending.files)
    return pending


def _as_number(value: Any) -> float | None:
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        value = item(value)  # read, not touched in the mapping: the file may be cut short
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclasses.dataclass(frozen=True)
class AccelerateStates:
    recover_unsafe: bool = False
    parameter_order: tuple[str, ...] | None = None  # the model's named_parameters(), if known
    name: ClassVar[str] = "accelerate"

    def sniff(self, path: str) -> bool:
        return state_dirs(path) is not None

    def open(self, path: str) -> Run:
        found = state_dirs(path)
        if found is None:
            raise BadInputError(f"no accelerate save_state directories in {path}")
        dirs, root = found
        warnings: list[str] = []
        handles = SafetensorsHandles()
        pending = [read_state_dir(d, label_of(d, root), warnings, recover_unsafe=self.recover_unsafe,
                                  handles=handles, parameter_order=self.parameter_order)
                   for d in dirs]  # fmt: skip
        return build_run(path, self.name, pending, warnings, framework="accelerate")


__all__ = ["AccelerateStates"]
