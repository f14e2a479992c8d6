"""The live side: log per-parameter weight dynamics from inside a training loop.

    tracker = normscope.track(model, optimizer, "run/track.jsonl", every=10)
    for epoch in range(epochs):
        tracker.set_epoch(epoch)
        for x, y in loader:
            ...; loss.backward(); optimizer.step()
    tracker.close()

`normscope.track` is this module's `track`. Hooks on `optimizer.step` measure, every `every`
optimizer steps, |w|^2 before and after the step, |g|^2, <w, g> and |Δw|^2 for each parameter (see
`normscope.live.reduce`), plus the optimizer's hyper-parameters, and append one JSON line per
logged step to the log (`normscope.live.schema`).
Each line is written with one write call and flushed, so a crash leaves every earlier line readable.

Optimizers stepped with a closure (LBFGS, Lightning's automatic optimization) compute gradients
inside `step()`, after pre-hooks run: the tracker wraps the closure and measures right after it.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from normscope.errors import BadInputError
from normscope.live.reduce import StepReducer
from normscope.live.schema import (
    GROUP_KEYS,
    HEADER_TYPE,
    NONFINITE_FIELD,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    STAT_FIELDS,
    STEP_TYPE,
    encode_line,
    plain,
)
from normscope.run_files import TRAINING_LOG, run_data_in

_PREFIXES = ("_orig_mod.", "module.")


def clean_name(name: str) -> str:
    """Strip leading wrapper prefixes (torch.compile's `_orig_mod.`, DDP's `module.`)."""
    while name.startswith(_PREFIXES):
        name = name.split(".", 1)[1]
    return name


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside Lightning's / accelerate's wrappers (their step calls its step)."""
    seen = 0
    while not isinstance(optimizer, torch.optim.Optimizer) or type(optimizer).__name__ in {
            "LightningOptimizer", "AcceleratedOptimizer"}:
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if inner is None or seen > 8:
            break
        optimizer, seen = inner, seen + 1
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise BadInputError(f"track() needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
    return optimizer


def _group_record(group: dict[str, Any]) -> dict[str, Any]:
    return {k: plain(group[k]) for k in GROUP_KEYS if k in group}


def _finite_list(values: Iterable[float]) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in values]


class Tracker:
    """Owns the optimizer hooks and the log file. Use `track()` to make one.

    `step` counts optimizer steps taken (the record of a step carries the count after it);
    adapters may set it when a run resumes. `epoch` is written into each record as is.
    """

    def __init__(self, model: torch.nn.Module, optimizer: Any, path: str | os.PathLike[str],
                 *, every: int = 1, run_id: str | None = None, step: int = 0,
                 keep_buffers: bool | None = None, common_prefix: str | None = None) -> None:
        if not isinstance(every, int) or every < 1:
            raise BadInputError(f"every must be a positive integer, got {every!r}")
        self.optimizer = unwrap_optimizer(optimizer)
        self.path = Path(path)
        self.every = every
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.step = int(step)
        self.epoch: float | None = None
        self.names, params = self._tracked_params(model, self.optimizer)
        if common_prefix and all(n.startswith(common_prefix) for n in self.names):
            # e.g. Lightning's `model.` attribute: drop it as the checkpoint sources do
            self.names = [n[len(common_prefix):] for n in self.names]
        self._reducer = StepReducer(params, keep_buffers=keep_buffers)
        self._groups = self._param_group_index(self.optimizer, params)
        self._step_groups: list[dict[str, Any]] = []
        self._closed = False
        held = run_data_in(self.path)
        if held and held != TRAINING_LOG:  # an earlier log at the path is started afresh
            raise BadInputError(f"{self.path} holds {held}; the tracker never writes over a run's "
                                "files, so give its log another name")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Start the file fresh, then append (O_APPEND): after logrotate's copytruncate the next
        # record lands at the start, not past a hole of NULs. Each record: one write, then flush.
        self.path.write_bytes(b"")
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._write(self._header(model, params))
        self._handles = [
            self.optimizer.register_step_pre_hook(self._pre_hook),
            self.optimizer.register_step_post_hook(self._post_hook),
        ]

    # ---- set-up -----------------------------------------------------------------------------
    @staticmethod
    def _tracked_params(model: torch.nn.Module, optimizer: torch.optim.Optimizer
                        ) -> tuple[list[str], list[torch.Tensor]]:
        """Parameters both named by the model and stepped by the optimizer, in model order."""
        in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
        names, params, seen = [], [], set()
        for name, p in model.named_parameters():
            if id(p) in in_optimizer and id(p) not in seen and p.is_floating_point():
                seen.add(id(p))
                names.append(clean_name(name))
                params.append(p)
        if not params:
            raise BadInputError("track(): none of the model's parameters is in the optimizer")
        return names, params

    @staticmethod
    def _param_group_index(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]
                           ) -> list[int]:
        where = {id(p): gi for gi, g in enumerate(optimizer.param_groups) for p in g["params"]}
        return [where[id(p)] for p in params]

    def _header(self, model: torch.nn.Module, params: list[torch.Tensor]) -> dict[str, Any]:
        groups = []
        for gi, group in enumerate(self.optimizer.param_groups):
            record = _group_record(group)
            record["params"] = [n for n, g in zip(self.names, self._groups) if g == gi]
            groups.append(record)
        return {
            "type": HEADER_TYPE, "schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION,
            "run_id": self.run_id, "every": self.every, "start_step": self.step,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "optimizer": type(self.optimizer).__name__, "model": type(model).__name__,
            "torch": torch.__version__,
            "params": [{"name": n, "shape": list(p.shape), "dtype": str(p.dtype).removeprefix("torch."),
                        "numel": p.numel(), "group": g}
                       for n, p, g in zip(self.names, params, self._groups)],
            "param_groups": groups,
        }

    # ---- hooks ------------------------------------------------------------------------------
    def _logs_this_step(self) -> bool:
        return (self.step + 1) % self.every == 0

    def _pre_hook(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict
                  ) -> tuple[tuple, dict] | None:
        if self._closed or not self._logs_this_step():
            return None
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is None:
            self._measure_before()
            return None
        wrapped = self._wrap_closure(closure)
        if "closure" in kwargs or len(args) <= 1:
            return args, {**kwargs, "closure": wrapped}
        return (args[0], wrapped, *args[2:]), kwargs

    def _wrap_closure(self, closure: Callable[[], Any]) -> Callable[[], Any]:
        def measured_closure() -> Any:
            loss = closure()
            if not self._reducer.pending:  # LBFGS may call it again: the first gradient counts
                self._measure_before()
            return loss
        return measured_closure

    def _measure_before(self) -> None:
        self._step_groups = [_group_record(g) for g in self.optimizer.param_groups]
        self._reducer.before_step()

    def _post_hook(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if self._closed:
            return
        self.step += 1
        if self._reducer.pending:
            self._write(self._record())

    def _record(self) -> dict[str, Any]:
        stats, has_grad = self._reducer.after_step()
        columns = stats.tolist()
        record: dict[str, Any] = {"type": STEP_TYPE, "step": self.step, "epoch": plain(self.epoch),
                                  "time": round(time.time(), 3), "groups": self._step_groups}
        for name, values in zip(STAT_FIELDS, columns):
            if name in ("g_sq", "wg"):
                values = [v if present else math.nan for v, present in zip(values, has_grad)]
            record[name] = _finite_list(values)
        w_sq = columns[0]
        if not all(math.isfinite(v) for v in w_sq):
            record[NONFINITE_FIELD] = self._reducer.count_nonfinite()
        return record

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(encode_line(record))
        self._file.flush()

    # ---- public -----------------------------------------------------------------------------
    def set_epoch(self, epoch: float | None) -> None:
        self.epoch = epoch

    def close(self) -> None:
        """Remove the hooks and close the log; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for handle in self._handles:
            handle.remove()
        self._file.close()

    def __enter__(self) -> Tracker:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Tracker(path={str(self.path)!r}, params={len(self.names)}, every={self.every}, "
                f"step={self.step}, closed={self._closed})")


def track(model: torch.nn.Module, optimizer: Any, path: str | os.PathLike[str], every: int = 1,
          run_id: str | None = None, *, step: int = 0, keep_buffers: bool | None = None,
          common_prefix: str | None = None) -> Tracker:
    """Start logging `model`'s weight dynamics under `optimizer` to the JSON Lines file `path`.

    Every `every` optimizer steps a record is appended (the file is created fresh). `step` is the
    number of optimizer steps already taken (for resumed runs). `keep_buffers` keeps the two flat
    working buffers (2x the tracked parameters) between logged steps; default: on CPU only.
    `common_prefix` is removed from every parameter name when all of them start with it.
    """
    return Tracker(model, optimizer, path, every=every, run_id=run_id, step=step,
                   keep_buffers=keep_buffers, common_prefix=common_prefix)
