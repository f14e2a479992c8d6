"""Real small training runs for the invariance/equilibrium tests, reduced straight into SnapshotStats.

The sources and engine are other modules' jobs; here we need exact numbers from a run we control:
per-epoch weight norms, dot products with the previous epoch, the optimizer buffer (SGD momentum or
Adam exp_avg) and, for the live-log case, the last step's gradient — the same quantities the engine
and the tracker put in the trajectory table.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from normscope.snapshot import ParamGroup, ParamStats, SnapshotMeta, SnapshotStats
from normscope.trajectory import Trajectory, build_trajectory


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(data.target)


def small_bn_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().double().reshape(-1)


def train_run(
    make_model: Callable[[], nn.Module],
    *,
    optimizer: str = "SGD",
    lr: float = 0.2,
    weight_decay: float = 1e-3,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    epochs: int = 12,
    batch: int = 64,
    lr_decay_at: int | None = None,
    log_grads: bool = False,
    seed: int = 0,
) -> Trajectory:
    torch.manual_seed(seed)
    x, y = digits_tensors()
    model = make_model()
    if optimizer == "SGD":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    names = [n for n, _ in model.named_parameters()]
    prev: dict[str, torch.Tensor] = {}
    stats: list[SnapshotStats] = []
    step = 0
    for epoch in range(epochs + 1):
        grads: dict[str, torch.Tensor] = {}
        if epoch > 0:
            if lr_decay_at is not None and epoch == lr_decay_at:
                for g in opt.param_groups:
                    g["lr"] *= 0.1
            model.train()
            order = torch.randperm(len(x))
            for start in range(0, len(x) - batch + 1, batch):
                idx = order[start:start + batch]
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                if log_grads:  # <w, g> at the weights the gradient was taken at, as a step hook sees it
                    grads = {n: (_f64(p.grad), float(_f64(p) @ _f64(p.grad))) for n, p in model.named_parameters()}
                opt.step()
                step += 1
        group = opt.param_groups[0]
        meta = SnapshotMeta(
            path=f"epoch{epoch}", step=step, epoch=float(epoch), order_source="embedded", optimizer=optimizer,
            param_groups=(ParamGroup(params=tuple(names), lr=group["lr"], weight_decay=group["weight_decay"],
                                     momentum=group.get("momentum"), betas=group.get("betas"),
                                     decoupled_weight_decay=optimizer == "AdamW"),),
            hyperparams_source="test training loop",
        )
        params: dict[str, ParamStats] = {}
        for (name, p), state in zip(model.named_parameters(), (opt.state.get(q, {}) for q in model.parameters())):
            w = _f64(p)
            buf = state.get("momentum_buffer", state.get("exp_avg"))
            g, g_dot = grads.get(name, (None, None))
            params[name] = ParamStats(
                numel=w.numel(), norm_sq=float(w @ w),
                dot_prev=float(w @ prev[name]) if name in prev else None,
                diff_sq=float((w - prev[name]) @ (w - prev[name])) if name in prev else None,
                buf_dot=float(w @ _f64(buf)) if buf is not None else None,
                buf_norm_sq=float(_f64(buf) @ _f64(buf)) if buf is not None else None,
                exp_avg_sq_sum=float(state["exp_avg_sq"].double().sum()) if "exp_avg_sq" in state else None,
                grad_norm_sq=float(g @ g) if g is not None else None,
                grad_dot=g_dot,
            )
            prev[name] = w.clone()
        for name, buf in model.named_buffers():  # running stats travel in state dicts, so in the table
            if buf.is_floating_point():
                b = _f64(buf)
                params[name] = ParamStats(numel=b.numel(), norm_sq=float(b @ b))
        params = {k: params[k] for k in model.state_dict() if k in params}  # state-dict order
        shapes = {n: tuple(p.shape) for n, p in model.state_dict().items()}
        stats.append(SnapshotStats(meta=meta, params=params, shapes=shapes,
                                   dtypes={n: "float32" for n in shapes}))
    return build_trajectory(stats, layout="test", root="memory", ordering="embedded")
