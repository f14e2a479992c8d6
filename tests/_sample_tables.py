"""Trajectory tables of the committed sample runs, through the real pipeline when it is there.

`normscope.api.load_trajectory` needs the engine; until the engine branch lands on main, a float64
reference reduction over the same sources (`normscope.sources.open_run`) stands in for it, computing
exactly the columns the engine documents (norms, dot with the previous snapshot, optimizer buffers).
"""

from __future__ import annotations

import functools
import os

import torch

from normscope.snapshot import ParamStats, SnapshotStats
from normscope.trajectory import Trajectory, build_trajectory

SAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sample_runs")
SGD_RUN = os.path.join(SAMPLES, "digits_bn_cnn_sgd")
ADAMW_RUN = os.path.join(SAMPLES, "digits_ln_transformer_adamw")


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.detach().double().reshape(-1)


def _reference_stats(run) -> list[SnapshotStats]:
    out, prev = [], {}
    for snap in run.snapshots:
        params, shapes, dtypes = {}, {}, {}
        for name, ref in snap.tensors.items():
            w = _flat(ref.load())
            state = snap.optimizer_state.get(name, {})
            buf = state.get("momentum_buffer", state.get("exp_avg"))
            buf = _flat(buf.load()) if buf is not None else None
            sq = state.get("exp_avg_sq")
            p = prev.get(name)
            same = p is not None and p.shape == w.shape
            params[name] = ParamStats(
                numel=w.numel(), norm_sq=float(w @ w),
                dot_prev=float(w @ p) if same else None, diff_sq=float((w - p) @ (w - p)) if same else None,
                buf_dot=float(w @ buf) if buf is not None else None,
                buf_norm_sq=float(buf @ buf) if buf is not None else None,
                exp_avg_sq_sum=float(_flat(sq.load()).sum()) if sq is not None else None,
            )
            shapes[name], dtypes[name], prev[name] = tuple(ref.shape), ref.dtype, w
        out.append(SnapshotStats(meta=snap.meta, params=params, shapes=shapes, dtypes=dtypes))
    return out


@functools.cache
def sample_trajectory(path: str) -> Trajectory:
    try:
        import normscope.engine  # noqa: F401
    except ImportError:
        from normscope.sources import open_run

        run = open_run(path)
        return build_trajectory(_reference_stats(run), layout=run.layout, root=run.root,
                                ordering=run.ordering, warnings=run.warnings)
    from normscope.api import load_trajectory

    return load_trajectory(path)
