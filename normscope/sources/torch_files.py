"""`torch.save` files (`.pt/.pth/.bin`, any name): one file, or a directory of them.

Bare state_dicts and the usual nested dicts (`model`/`state_dict`/`model_state_dict`/…, plus
`optimizer`, `epoch`, `step`, `global_step`) are understood. Loaded with `weights_only=True`
and `mmap=True`, so tensors stay on disk until the engine touches them.
"""

from __future__ import annotations

import dataclasses
import operator
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import numpy as np

from normscope._torch_seen import tensor_type
from normscope.errors import BadInputError
from normscope.file_reads import item
from normscope.file_stamps import FileStamp, check_unchanged, merge_stamps, stamp_path
from normscope.snapshot import Run

from ._assemble import build_run
from ._bounds import check_declared
from ._files import files_in, label_of
from ._keys import clean_names
from ._optimizer import read_optimizer
from ._ordering import PendingSnapshot
from ._refs import FLOAT_DTYPES, ChunkedTensorRef, MappedTensorRef, TorchTensorRef
from ._torchio import ZIP_MAGIC, load_torch_file, read_head, sniff_torch_file


MODEL_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "model_state",
              "weights", "params", "params_ema")  # fmt: skip
OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optimizer_state", "optim")
# nanoGPT's `iter_num`, DeepSpeed's `global_steps`
STEP_KEYS = ("global_step", "step", "iteration", "iter", "num_updates", "iter_num", "global_steps")
EPOCH_KEYS = ("epoch",)


def _is_tensor(value: Any) -> bool:
    """A torch tensor, or the numpy array the in-place reader leaves for one it does not hand to
    the kernel (`_fast_torch_zip.tensor_over`). Without torch imported there is no torch tensor."""
    return isinstance(value, tensor_type()) or type(value) is np.ndarray


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if type(value) is np.ndarray:
        return value.item() if value.size == 1 else None
    if _is_tensor(value) and value.numel() == 1:
        return item(value)  # read, not touched in the mapping: the file may be cut short
    return None


def split_checkpoint(
    obj: Any, path: str, is_tensor: Callable[[Any], bool] = _is_tensor
) -> tuple[Mapping[str, Any], Any, int | None, float | None]:
    """(model state_dict, optimizer state_dict or None, embedded step, embedded epoch).

    `is_tensor` tells tensors (or lazy refs standing for them) from other values.
    """

    def _tensor_dict(value: Any) -> bool:
        return isinstance(value, Mapping) and any(is_tensor(v) for v in value.values())

    if not isinstance(obj, Mapping):
        if is_tensor(obj):
            raise BadInputError(f"{path} holds a single tensor, not a state_dict")
        raise BadInputError(f"{path} holds a {type(obj).__name__}, not a state_dict")
    if all(is_tensor(v) for v in obj.values()) and obj:
        return obj, None, None, None
    model: Mapping[str, Any] | None = None
    for key in MODEL_KEYS:
        value = obj.get(key)
        if _tensor_dict(value):
            model = value
            break
        # one more level, e.g. {"model": {"state_dict": ...}}
        if isinstance(value, Mapping):
            inner = next(
                (value[k] for k in MODEL_KEYS if _tensor_dict(value.get(k))), None
            )
            if inner is not None:
                model = inner
                break
    if model is None:
        tensors = {k: v for k, v in obj.items() if is_tensor(v)}
        if not tensors:
            keys = ", ".join(sorted(map(str, obj))[:8])
            raise BadInputError(f"{path} has no model tensors (top-level keys: {keys})")
        model = tensors
    optimizer = next(
        (obj[k] for k in OPTIMIZER_KEYS if isinstance(obj.get(k), Mapping)), None
    )
    if optimizer is None and isinstance(obj.get("optimizer_states"), (list, tuple)):
        states = obj["optimizer_states"]
        optimizer = states[0] if states and isinstance(states[0], Mapping) else None
    step = next(
        (_number(obj[k]) for k in STEP_KEYS if _number(obj.get(k)) is not None), None
    )
    epoch = next(
        (_number(obj[k]) for k in EPOCH_KEYS if _number(obj.get(k)) is not None), None
    )
    return model, optimizer, None if step is None else int(step), epoch


def as_ref(name: str, value: Any) -> Any:
    """A loaded (mmap-backed) tensor wrapped as a ref; a ref already lazy gets the clean name."""
    if isinstance(value, tensor_type()):
        return TorchTensorRef(name, value)
    if type(value) is MappedTensorRef:
        return value.named(name)
    if type(value) is np.ndarray:  # a tensor the in-place reader left as numpy (a scalar, a view)
        # lazy: only such a tensor, rare in a model or optimizer state, needs torch
        import torch

        return TorchTensorRef(name, torch.from_numpy(value))
    return dataclasses.replace(value, name=name)


def is_tensor_or_ref(value: Any) -> bool:
    """A tensor, or a ref standing for one (what `load_torch_file(refs=True)` leaves: refs, and
    where torch is not imported, numpy arrays for the tensors the kernel does not read in place)."""
    if type(value) is MappedTensorRef or type(value) is np.ndarray:
        return True
    return isinstance(value, tensor_type())


_REF_NAME = operator.attrgetter("name")


def model_refs(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Floating-point tensors under clean names; integer/bool buffers (num_batches_tracked) skipped.

    Written for checkpoints of tens of thousands of tensors: one pass per step, no call per
    tensor beyond the ref itself."""
    values = list(state_dict.values())
    kinds = set(map(type, values))
    if kinds == {MappedTensorRef, np.ndarray}:  # read in place, beside integer buffers
        state_dict = {k: v for k, v in state_dict.items() if type(v) is MappedTensorRef or v.dtype.kind == "f"}
        values = list(state_dict.values())
        kinds = set(map(type, values))
    if kinds == {MappedTensorRef}:  # a torch.save file read in place
        keys = list(state_dict)
        if list(clean_names(keys).values()) == keys and list(map(_REF_NAME, values)) == keys:
            return dict(zip(keys, values))
    tensor = tensor_type()
    floats = {
        k: v
        for k, v in state_dict.items()
        if (
            type(v) is MappedTensorRef  # made for floating-point tensors only
            or (
                v.is_floating_point()
                if isinstance(v, tensor)
                else v.dtype.kind == "f"
                if type(v) is np.ndarray
                else isinstance(v, ChunkedTensorRef) and v.dtype in FLOAT_DTYPES
            )
        )
    }
    names = clean_names(floats)
    return {
        clean: (
            (v if v.name == clean else v.named(clean)) if type(v) is MappedTensorRef
            else TorchTensorRef(clean, v) if isinstance(v, tensor)
            else as_ref(clean, v)
        )
        for (clean, v) in zip(names.values(), floats.values())
    }


def pending_from_parts(
    path: str,
    label: str,
    state_dict: Mapping[str, Any],
    optimizer: Mapping[str, Any] | None,
    step: int | None,
    epoch: float | None,
    optimizer_where: str,
    warnings: list[str],
    files: tuple[FileStamp, ...] | None = None,
) -> PendingSnapshot:
    """The pending snapshot of a loaded state dict (and optimizer state); `files`: the stamps
    of the files its tensors are read from, taken before they were mapped (default: `path`'s
    now)."""
    tensors = model_refs(state_dict)
    if not tensors:
        raise BadInputError(f"{path} holds no floating-point tensors")
    pending = PendingSnapshot(
        path=path,
        label=label,
        tensors=tensors,
        embedded_step=step,
        embedded_epoch=epoch,
    )
    if optimizer is not None:
        info = read_optimizer(
            optimizer,
            list(tensors),
            {n: r.shape for n, r in tensors.items()},
            as_ref,
            label,
        )
        pending.optimizer, pending.param_groups = info.optimizer, info.param_groups
        pending.optimizer_state = info.state
        pending.hyperparams_source = optimizer_where if info.param_groups else None
        warnings.extend(info.warnings)
    files = stamp_path(path) if files is None else files
    pending.files = files
    check_declared(path, pending.tensors, pending.optimizer_state, files)
    if os.path.isfile(path) and read_head(path, 4) != ZIP_MAGIC:
        pending.extra["legacy_format"] = True
        warnings.append(
            f"{label}: legacy (non-zip) torch file, read whole into memory (no mmap)"
        )
    return pending


def pending_from_checkpoint(
    checkpoint: Any,
    path: str,
    label: str,
    warnings: list[str],
    *,
    optimizer_where: str = "optimizer",
    is_tensor: Callable[[Any], bool] | None = None,
) -> PendingSnapshot:
    """A loaded checkpoint object (torch, Lightning, DCP) → the pending snapshot its layout builds on."""
    split = split_checkpoint(checkpoint, path) if is_tensor is None else split_checkpoint(
        checkpoint, path, is_tensor=is_tensor)
    state_dict, optimizer, step, epoch = split
    pending = pending_from_parts(path, label, state_dict, optimizer, step, epoch,
                                 f"{label} {optimizer_where} param_groups", warnings)
    pending.top_keys = frozenset(str(k) for k in checkpoint)
    return pending


def read_torch_checkpoint(
    path: str, label: str, warnings: list[str], *, recover_unsafe: bool = False
) -> PendingSnapshot:
    before = stamp_path(path)  # before the file is mapped: a change from here on is caught
    obj = load_torch_file(path, recover_unsafe=recover_unsafe, notes=warnings, refs=True)
    check_unchanged(before)
    pending = pending_from_checkpoint(obj, path, label, warnings, is_tensor=is_tensor_or_ref)
    pending.files = merge_stamps(before, pending.files)
    return pending


@dataclasses.dataclass(frozen=True)
class TorchFiles:
    """A `torch.save` file, or a directory whose checkpoint files are `torch.save` files."""

    recover_unsafe: bool = False
    name: ClassVar[str] = "torch"

    def sniff(self, path: str) -> bool:
        if os.path.isfile(path):
            return sniff_torch_file(path)
        return os.path.isdir(path) and any(sniff_torch_file(p) for p in files_in(path))

    def open(self, path: str) -> Run:
        notes: list[str] = []
        skipped: list[str] = []
        if os.path.isfile(path):
            files, root = [path], os.path.dirname(path) or "."
        else:
            # a generator: each file sniffed and read in turn, so its zip directory, parsed for
            # the sniff, is still in the cache when the reader asks (a pass of sniffs over a
            # large run first would evict it, and every directory would be parsed again)
            files, root = _torch_files_in(path, skipped), path
        pending = [
            read_torch_checkpoint(p, label_of(p, root), notes, recover_unsafe=self.recover_unsafe)
            for p in files
        ]
        if skipped:
            notes.insert(0, f"ignored {len(skipped)} non-checkpoint file(s): {', '.join(skipped[:5])}")
        return build_run(path, self.name, pending, notes)


def _torch_files_in(directory: str, skipped: list[str]) -> Iterator[str]:
    """The torch files of `directory`, each as it is found; the names of the others go to `skipped`."""
    for p in files_in(directory):
        if sniff_torch_file(p):
            yield p
        else:
            skipped.append(os.path.basename(p))
