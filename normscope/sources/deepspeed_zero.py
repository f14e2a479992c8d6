"""DeepSpeed checkpoints (`save_checkpoint`): ZeRO stages 0-3, read without DeepSpeed.

A run directory holds `latest` (the newest tag) and one `global_step<N>/` directory per save with
`mp_rank_00_model_states.pt` (stage 0-2: the module's full weights, `global_steps`, the
parameter names and shapes per optimizer group) or `zero_pp_rank_<r>_mp_rank_00_model_states.pt`
(stage 3: one per data-parallel rank, parameters left empty), and
`[bf16_]zero_pp_rank_<r>_mp_rank_00_optim_states.pt`: each rank's flat fp32 partition of every
param group and the optimizer state over it.

Stage 0-2 weights are the module's own; stage 3 parameters are reassembled from the fp32
partitions the way DeepSpeed's `zero_to_fp32` does: every parameter is split into
`ceil(numel / world_size)` elements a rank, laid end to end in each rank's group vector. Per
parameter optimizer state is cut from the flat state by the same offsets (stage 1/2: parameters
packed in group order, with `param_alignment_paddings` between them, across the ranks' partitions
put end to end). The files are read by torch's weights_only unpickler with DeepSpeed's three
globals bound to inert records (`_restricted_deepspeed`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from normscope.errors import BadInputError
from normscope.file_stamps import stamp_path
from normscope.snapshot import Run

from ._assemble import build_run
from ._bounds import check_declared
from ._files import files_in, label_of, subdirs_in
from ._optimizer import read_optimizer
from ._ordering import PendingSnapshot
from ._refs import SizedByHeader, TorchTensorRef, dtype_name
from ._restricted_deepspeed import load_deepspeed_file
from .torch_files import as_ref, model_refs

_MODEL_STATES = re.compile(r"^(?:zero_pp_rank_(\d+)_)?mp_rank_(\d+)_model_states\.pt$")
_OPTIM_STATES = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")
STATE_KEYS = ("exp_avg", "exp_avg_sq", "momentum_buffer")


def _ranked(directory: str, pattern: re.Pattern[str]) -> list[tuple[int, int, str]]:
    found = []
    for path in files_in(directory):
        m = pattern.match(os.path.basename(path))
        if m:
            found.append((int(m.group(1) or 0), int(m.group(2)), path))
    return sorted(found)


def is_zero_dir(path: str) -> bool:
    return os.path.isdir(path) and bool(_ranked(path, _MODEL_STATES))


@dataclasses.dataclass(frozen=True)
class GatheredRef(SizedByHeader):
    """A parameter (or its optimizer state) spread over ranks' flat vectors: `pieces` are
    (flat tensor, start, length), put end to end and cut to the shape on `load()`; its size is
    its shape's, as declared, for the bound on declared bytes."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    pieces: tuple[tuple[Any, int, int], ...] = dataclasses.field(repr=False)

    @property
    def span(self) -> None:  # in pieces of several flat vectors (see `snapshot.TensorRef`)
        return None

    def load(self):  # type: ignore[no-untyped-def]
        import torch  # lazy: torch, which reading a run whose tensors the kernel reads in place never imports

        parts = [flat.narrow(0, start, length) for flat, start, length in self.pieces]
        flat = torch.cat(parts) if len(parts) > 1 else parts[0]
        return flat[: math.prod(self.shape)].view(self.shape)


def _gathered(name: str, shape: tuple[int, ...], pieces: list[tuple[Any, int, int]]) -> Any:
    numel = math.prod(shape)
    flat, start, length = pieces[0]
    if len(pieces) == 1 or length >= numel:  # one rank holds it all: a view, read in place
        if start + numel > flat.numel():
            raise BadInputError(f"{name}: its partition ends past the saved flat vector")
        return TorchTensorRef(name, flat.narrow(0, start, numel).view(shape))
    for flat, start, length in pieces:
        if start + length > flat.numel():
            raise BadInputError(f"{name}: its partition ends past the saved flat vector")
    return GatheredRef(name, shape, dtype_name(flat.dtype), tuple(pieces))


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in value)


def _group_layouts(
    stage: int, world: int, param_shapes: Sequence[Mapping[str, Any]],
    paddings: Sequence[Sequence[int]] | None,
) -> list[list[tuple[str, tuple[int, ...], list[tuple[int, int, int]]]]]:
    """Per group, per parameter: (name, shape, [(rank, start, length)]) in the ranks' vectors."""
    layouts = []
    for g, shapes in enumerate(param_shapes):
        params = []
        offset = 0
        for i, (name, raw) in enumerate(shapes.items()):
            shape = _shape(raw)
            numel = math.prod(shape)
            if stage == 3:
                part = math.ceil(numel / world)
                params.append((name, shape, [(r, offset, part) for r in range(world)]))
                offset += part
            else:
                params.append((name, shape, [(-1, offset, numel)]))  # -1: the ranks end to end
                offset += numel
                if paddings is not None and g < len(paddings) and i < len(paddings[g]):
                    offset += int(paddings[g][i])
        layouts.append(params)
    return layouts


def _pieces(spec: list[tuple[int, int, int]], flats: Sequence[Any]) -> list[tuple[Any, int, int]]:
    """Where (rank, start, length) lies in the ranks' flat vectors; rank -1 is an offset into
    their concatenation (stage 1/2), cut here into the pieces each rank holds."""
    if spec[0][0] != -1:
        return [(flats[r], s, n) for r, s, n in spec]
    ((_, start, length),) = spec
    pieces, base = [], 0
    for flat in flats:
        size = flat.numel()
        lo, hi = max(start, base), min(start + length, base + size)
        if lo < hi:
            pieces.append((flat, lo - base, hi - lo))
        base += size
    if sum(n for _, _, n in pieces) != length:
        raise BadInputError("a parameter lies past the end of the saved partitions")
    return pieces


def _optimizer_dict(osd: Mapping[str, Any], stage: int) -> Mapping[str, Any]:
    inner = osd.get("base_optimizer_state") if stage < 3 else osd.get("optimizer_state_dict")
    return inner if isinstance(inner, Mapping) else {}


def read_zero_dir(directory: str, label: str, warnings: list[str]) -> PendingSnapshot:
    before = stamp_path(directory)  # every rank's files, before they are mapped
    models = _ranked(directory, _MODEL_STATES)
    if any(mp != 0 for _, mp, _ in models):
        raise BadInputError(f"{directory} is split by model (tensor/pipeline) parallelism "
                            "(mp_rank_01…); normscope reads data-parallel ZeRO checkpoints")  # fmt: skip
    model = load_deepspeed_file(models[0][2])
    if not isinstance(model, Mapping) or not isinstance(model.get("module"), Mapping):
        raise BadInputError(f"{models[0][2]} holds no `module` state_dict: not a DeepSpeed checkpoint")
    optims = _ranked(directory, _OPTIM_STATES)
    osds = []
    for _, _, path in optims:
        loaded = load_deepspeed_file(path)
        osd = loaded.get("optimizer_state_dict") if isinstance(loaded, Mapping) else None
        if not isinstance(osd, Mapping):
            raise BadInputError(f"{path} holds no optimizer_state_dict: not a DeepSpeed optimizer file")
        osds.append(osd)
    stage = int(osds[0].get("zero_stage", 0)) if osds else 0
    step = model.get("global_steps")
    module = model["module"]
    tensors: dict[str, Any]
    if stage == 3:
        tensors = _stage3_weights(directory, model, models, osds)
    else:
        tensors = model_refs(module)
    pending = PendingSnapshot(path=directory, label=label, tensors=tensors,
                              embedded_step=step if isinstance(step, int) else None)  # fmt: skip
    pending.extra["zero_stage"] = stage
    if isinstance(model.get("global_samples"), int):
        pending.extra["global_samples"] = model["global_samples"]
    if osds and stage in (1, 2, 3):
        _read_optimizer(pending, stage, model, osds, warnings, label)
    pending.files = before
    check_declared(directory, pending.tensors, pending.optimizer_state, pending.files)
    return pending


def _world(osd: Mapping[str, Any]) -> int:
    count = osd.get("partition_count", 1)
    return int(max(count)) if isinstance(count, (list, tuple)) else int(count)


def _stage3_weights(directory: str, model: Mapping[str, Any], models: list, osds: list) -> dict[str, Any]:
    world = _world(osds[0])
    if len(osds) != world or len(models) != world:
        raise BadInputError(f"{directory} has {len(osds)} optimizer and {len(models)} model files "
                            f"for {world} ranks: a save that did not finish?")  # fmt: skip
    flats = [osd.get("fp32_flat_groups") for osd in osds]
    module = model["module"]
    buffers = {name: module[name] for name in model.get("buffer_names") or [] if name in module}
    out: dict[str, Any] = dict(model_refs(buffers)) if buffers else {}
    frozen = model.get("frozen_param_shapes") or {}
    if frozen:
        fragments = [load_deepspeed_file(path).get("frozen_param_fragments") or {} for *_, path in models]
        for name, raw in frozen.items():
            pieces = [(f[name], 0, f[name].numel()) for f in fragments]
            out[name] = _gathered(name, _shape(raw), pieces)
    for g, params in enumerate(_group_layouts(3, world, model.get("param_shapes") or [], None)):
        for name, shape, spec in params:
            out[name] = _gathered(name, shape, _pieces(spec, [f[g] for f in flats]))
    return out


def _read_optimizer(pending: PendingSnapshot, stage: int, model: Mapping[str, Any],
                    osds: list, warnings: list[str], label: str) -> None:  # fmt: skip
    world = _world(osds[0])
    if len(osds) != world:
        warnings.append(f"{label}: {len(osds)} optimizer files for {world} ranks; optimizer not read")
        return
    inner = [_optimizer_dict(osd, stage) for osd in osds]
    groups = inner[0].get("param_groups") or []
    states = [o.get("state") or {} for o in inner]
    paddings = osds[0].get("param_alignment_paddings")
    layouts = _group_layouts(stage, world, model.get("param_shapes") or [], paddings)
    # one entry per parameter, named: what `read_optimizer` reads as `param_names`
    per_param: dict[int, dict[str, Any]] = {}
    flat_groups: list[dict[str, Any]] = []
    position = 0
    for g, params in enumerate(layouts):
        group = dict(groups[g]) if g < len(groups) and isinstance(groups[g], Mapping) else {}
        flat_state = [s.get(g) or s.get(str(g)) or {} for s in states]
        positions, names = [], []
        for name, shape, spec in params:
            entry: dict[str, Any] = {}
            for key in STATE_KEYS:
                flats = [fs.get(key) for fs in flat_state]
                if all(hasattr(f, "shape") for f in flats) and flats:
                    entry[key] = _gathered(f"{name}:{key}", shape, _pieces(spec, flats))
            if "step" in flat_state[0]:
                entry["step"] = flat_state[0]["step"]
            per_param[position] = entry
            positions.append(position)
            names.append(name)
            position += 1
        group["params"], group["param_names"] = positions, names
        flat_groups.append(group)
    info = read_optimizer({"state": per_param, "param_groups": flat_groups}, list(pending.tensors),
                          {n: tuple(r.shape) for n, r in pending.tensors.items()}, _keep_ref, label)  # fmt: skip
    pending.optimizer = info.optimizer or _configured(model)
    pending.param_groups, pending.optimizer_state = info.param_groups, info.state
    pending.hyperparams_source = f"{label} ZeRO optimizer param_groups"
    warnings.extend(info.warnings)


def _keep_ref(name: str, value: Any) -> Any:
    return value if isinstance(value, GatheredRef) else as_ref(name, value)


def _configured(model: Mapping[str, Any]) -> str | None:
    config = model.get("ds_config")
    optimizer = config.get("optimizer") if isinstance(config, Mapping) else None
    kind = optimizer.get("type") if isinstance(optimizer, Mapping) else None
    return str(kind) if kind else None


def _read_or_say_why(directory: str, label: str, warnings: list[str]) -> PendingSnapshot:
    """`read_zero_dir`, with files whose structure is not what DeepSpeed writes (lists where
    mappings belong, missing groups) reported in one line."""
    try:
        return read_zero_dir(directory, label, warnings)
    except (AttributeError, TypeError, KeyError, IndexError, ValueError) as exc:
        raise BadInputError(
            f"{directory} is not laid out as a DeepSpeed checkpoint: {type(exc).__name__}: {exc}"
        ) from None


@dataclasses.dataclass(frozen=True)
class DeepSpeedCheckpoints:
    """A DeepSpeed checkpoint directory (`latest`, `global_step<N>/`), or one tag directory."""

    name: ClassVar[str] = "deepspeed"

    def sniff(self, path: str) -> bool:
        return is_zero_dir(path) or (
            os.path.isdir(path) and any(is_zero_dir(d) for d in subdirs_in(path))
        )

    def open(self, path: str) -> Run:
        warnings: list[str] = []
        if is_zero_dir(path):
            dirs, root = [path], os.path.dirname(os.path.abspath(path))
        else:
            dirs, root = [d for d in subdirs_in(path) if is_zero_dir(d)], path
        pending = [_read_or_say_why(d, label_of(d, root), warnings) for d in dirs]
        stages = sorted({p.extra.get("zero_stage", 0) for p in pending})
        framework = "DeepSpeed ZeRO-" + "/".join(str(s) for s in stages)
        return build_run(path, self.name, pending, warnings, framework=framework)
