"""Real tiny training runs for the check/report tests, reduced to trajectories without the sources.

A small BatchNorm MLP trains on scikit-learn's digits (real data, offline) with SGD + momentum +
weight decay; each epoch's state_dict is saved with torch.save into a tmp dir and reduced here in
float64 to the same per-parameter stats the engine produces, then `build_trajectory` makes the table.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch

from normscope.snapshot import (
    ORDER_FILENAME,
    ParamGroup,
    ParamStats,
    SnapshotMeta,
    SnapshotStats,
)
from normscope.trajectory import Trajectory, build_trajectory


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 32, bias=False), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
        torch.nn.Linear(32, 32, bias=False), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
        torch.nn.Linear(32, 10),
    )


@functools.lru_cache(maxsize=8)
def train_states(epochs: int = 8, *, seed: int = 0, lr: float = 0.2, weight_decay: float = 5e-3,
                 momentum: float = 0.9, steps_per_epoch: int = 14):
    """Train and return [(epoch, step, state_dict copy)] after each epoch, plus the param group.

    Cached per arguments: tests only read the states (modified copies are made with new tensors).
    One thread: on a shared 2-core machine torch's default thread pool makes this 8x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(epochs, seed, lr, weight_decay, momentum, steps_per_epoch)
    finally:
        torch.set_num_threads(threads)


def _train(epochs, seed, lr, weight_decay, momentum, steps_per_epoch):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    model = _model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    states = [(0, 0, {k: v.detach().clone() for k, v in model.state_dict().items()})]
    step = 0
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(x), generator=gen)
        for batch in order[: steps_per_epoch * 64].split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
            step += 1
        states.append((epoch, step, {k: v.detach().clone() for k, v in model.state_dict().items()}))
    names = tuple(n for n, _ in model.named_parameters())
    group = ParamGroup(params=names, lr=lr, weight_decay=weight_decay, momentum=momentum)
    return states, group


def save_states(states, directory: Path) -> list[Path]:
    """Write each state as directory/step_<N>.pt (weights_only-loadable) and return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for epoch, step, state in states:
        path = directory / f"step_{step}.pt"
        torch.save({"state_dict": state, "epoch": epoch, "global_step": step}, path)
        paths.append(path)
    return paths


def reduce_states(states, group: ParamGroup, paths: list[Path] | None = None) -> Trajectory:
    """Float64 per-tensor stats (norm², dot and diff² with the previous snapshot, non-finite count)."""
    stats = []
    prev: dict[str, torch.Tensor] = {}
    for index, (epoch, step, state) in enumerate(states):
        params, shapes, dtypes = {}, {}, {}
        for name, tensor in state.items():
            if not tensor.is_floating_point():
                continue
            t = tensor.detach().to(torch.float64).flatten()
            finite = torch.isfinite(t)
            before = prev.get(name)
            same = before is not None and before.shape == t.shape
            params[name] = ParamStats(
                numel=t.numel(),
                norm_sq=float((t * t).sum()),
                nonfinite=int((~finite).sum()),
                dot_prev=float((t * before).sum()) if same else None,
                diff_sq=float(((t - before) ** 2).sum()) if same else None,
            )
            shapes[name] = tuple(tensor.shape)
            dtypes[name] = str(tensor.dtype).removeprefix("torch.")
            prev[name] = t
        path = str(paths[index]) if paths else f"step_{step}.pt"
        meta = SnapshotMeta(path=path, step=step, epoch=float(epoch), order_source=ORDER_FILENAME,
                            optimizer="SGD", param_groups=(group,), hyperparams_source="test")
        stats.append(SnapshotStats(meta=meta, params=params, shapes=shapes, dtypes=dtypes))
    root = str(Path(paths[0]).parent) if paths else "memory"
    return build_trajectory(stats, layout="torch", root=root, ordering=ORDER_FILENAME)


def with_nan(states, snapshot: int, param: str):
    """A copy of the states with one NaN written into `param` from `snapshot` on (the originals stay)."""
    out = []
    for index, (epoch, step, state) in enumerate(states):
        state = {k: v.clone() for k, v in state.items()}
        if index >= snapshot:
            state[param].view(-1)[0] = math.nan
        out.append((epoch, step, state))
    return out
