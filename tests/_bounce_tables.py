"""Hand-built trajectories for the bounce tests, made through the real contract (SnapshotStats →
build_trajectory), so the analyses see exactly the table a source and the engine would produce."""

from __future__ import annotations

import numpy as np

from normscope.snapshot import ParamGroup, ParamStats, SnapshotMeta, SnapshotStats
from normscope.trajectory import Trajectory, build_trajectory


def trajectory_from_norms(
    layer_norm_sq: dict[str, np.ndarray],
    *,
    lrs: np.ndarray | float = 0.1,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    steps_per_epoch: int = 100,
    record_epoch: bool = True,
    bias_norm_sq: float = 0.25,
    optimizer: str = "SGD",
) -> Trajectory:
    """One snapshot per epoch 0..n−1: a `<layer>.weight` (3x3 kernel) of the given squared norm and a
    constant `<layer>.bias` per layer, all in one SGD param group whose LR follows `lrs`."""
    names = list(layer_norm_sq)
    n = len(next(iter(layer_norm_sq.values())))
    lrs = np.broadcast_to(np.asarray(lrs, dtype=float), (n,))
    stats = []
    for e in range(n):
        params, shapes, dtypes = {}, {}, {}
        for layer in names:
            params[f"{layer}.weight"] = ParamStats(numel=9, norm_sq=float(layer_norm_sq[layer][e]))
            shapes[f"{layer}.weight"] = (3, 3)
            params[f"{layer}.bias"] = ParamStats(numel=3, norm_sq=bias_norm_sq * (1 + e))
            shapes[f"{layer}.bias"] = (3,)
        dtypes = {k: "float32" for k in params}
        group = ParamGroup(params=tuple(params), lr=float(lrs[e]), weight_decay=weight_decay,
                           momentum=momentum if optimizer == "SGD" else None,
                           betas=(0.9, 0.999) if optimizer != "SGD" else None)
        meta = SnapshotMeta(path=f"epoch{e}.pt", step=e * steps_per_epoch,
                            epoch=float(e) if record_epoch else None, order_source="embedded",
                            optimizer=optimizer, param_groups=(group,))
        stats.append(SnapshotStats(meta=meta, params=params, shapes=shapes, dtypes=dtypes))
    return build_trajectory(stats, layout="test")


def bounce_curve(n: int = 60, minimum: int = 15, drop: float = 0.35, rise: float = 0.45,
                 tau: float = 6.0) -> np.ndarray:
    """Squared norm that falls linearly to a minimum, then rises and levels off (a clean bounce)."""
    t = np.arange(n, dtype=float)
    bottom = 100.0 * (1 - drop)
    fall = 100.0 - (100.0 - bottom) * t / minimum
    up = bottom * (1 + rise * (1 - np.exp(-(t - minimum) / tau)))
    return np.where(t <= minimum, fall, up)


def noisy(values: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Multiplicative log-normal noise of size sigma (in log N) per epoch."""
    rng = np.random.default_rng(seed)
    return values * np.exp(sigma * rng.standard_normal(len(values)))
