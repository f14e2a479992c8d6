"""The engine on the committed sample runs (real training), against float64 references computed
straight from the files with torch/safetensors."""

from __future__ import annotations

import os

import pytest
from engine_helpers import f64, rel

from normscope.engine import compute_stats
from normscope.sources import open_run

ROOT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sample_runs"
)


def _refs(snapshot, name):
    w = f64(snapshot.tensors[name].load())
    state = snapshot.optimizer_state.get(name, {})
    buf = state.get("momentum_buffer", state.get("exp_avg"))
    sq = state.get("exp_avg_sq")
    return (
        w,
        None if buf is None else f64(buf.load()),
        None if sq is None else f64(sq.load()),
    )


@pytest.mark.parametrize(
    "run_dir", ["digits_bn_cnn_sgd", "digits_ln_transformer_adamw"]
)
def test_sample_run_matches_float64(run_dir, each_cpu_kernel):
    path = os.path.join(ROOT, run_dir)
    if not os.path.isdir(path):
        pytest.skip(f"{run_dir} not present")
    run = open_run(path)
    snaps = list(run.snapshots)[:6]
    stats = compute_stats(
        snaps, device="cpu", bucket_bytes=64 * 1024
    )  # forces several buckets
    checked_buf = 0
    for t in range(1, len(snaps)):
        for name in snaps[t].tensors:
            x, m, v = _refs(snaps[t], name)
            y = f64(snaps[t - 1].tensors[name].load())
            p = stats[t].params[name]
            assert rel(p.norm_sq, (x @ x).item()) < 1e-6, name
            assert (
                rel(p.diff_sq, ((x - y) @ (x - y)).item()) < 1e-6 or p.diff_sq == 0.0
            ), name
            assert (
                abs(p.dot_prev - (x @ y).item()) <= 1e-6 * abs((x @ y).item()) + 1e-12
            ), name
            if m is not None:
                bound = (
                    1e-6 * (x.norm() * m.norm()).item()
                )  # dot accuracy is relative to |x||m|
                assert abs(p.buf_dot - (x @ m).item()) <= bound, name
                assert (
                    rel(p.buf_norm_sq, (m @ m).item()) < 1e-6 or p.buf_norm_sq == 0.0
                ), name
                checked_buf += 1
            if v is not None:
                assert (
                    rel(p.exp_avg_sq_sum, v.sum().item()) < 1e-6
                    or p.exp_avg_sq_sum == 0.0
                ), name
    assert checked_buf > 0
