"""`compute_stats(granularity="row")`: per-row sums from the engine's own pass, on every sample layout,
checked against the checkpoint files reduced directly, and with tensors cut into row slices."""

from pathlib import Path

import numpy as np
import pytest
import torch

from normscope.engine import compute_stats
from normscope.engine.rows import RowCollector, row_sums
from normscope.row_stats import SPREAD_POINTS, row_angles, spread_of
from normscope.errors import BadInputError
from normscope.sources import open_run

SAMPLES = Path(__file__).resolve().parents[1] / "sample_runs"


def _state(path: Path) -> dict[str, torch.Tensor]:
    if path.is_dir():
        from safetensors.torch import load_file

        return load_file(str(path / "model.safetensors"))
    raw = torch.load(path, weights_only=True)
    if "state_dict" in raw:  # Lightning: the module's keys carry its `model.` prefix
        return raw["state_dict"]
    return raw["model"]


@pytest.mark.parametrize("run_name,bucket_bytes", [
    ("digits_bn_cnn_sgd", 256 << 20), ("digits_bn_cnn_sgd", 4096),  # 4 KiB buckets: row slices
    ("digits_ln_transformer_adamw", 256 << 20), ("digits_bn_cnn_lightning", 256 << 20),
])
@pytest.mark.usefixtures("each_cpu_kernel")  # "torch": the row-block kernels the CUDA path runs
def test_row_sums_from_the_engine_match_the_files(run_name, bucket_bytes):
    run = open_run(SAMPLES / run_name)
    snapshots = list(run.snapshots)[:4]
    tensor = compute_stats(snapshots, device="cpu", bucket_bytes=bucket_bytes)
    rows = compute_stats(snapshots, device="cpu", bucket_bytes=bucket_bytes, granularity="row")
    assert tensor[1].rows == {} and rows[0].rows == {}  # no previous snapshot for the first
    for t in (1, 2, 3):
        previous, current = (_state(Path(snapshots[i].meta.path)) for i in (t - 1, t))
        by_name = rows[t].rows
        assert by_name, run_name
        for name, spread in by_name.items():
            key = name if name in current else next(k for k in current if k.endswith(name))
            expected = spread_of(row_sums(current[key], previous[key]))
            assert (spread.rows, spread.row_numel, spread.exact) == (expected.rows, expected.row_numel,
                                                                     expected.exact)
            np.testing.assert_allclose(spread.angles, expected.angles, rtol=1e-5, atol=1e-9)
            np.testing.assert_allclose(spread.norms, expected.norms, rtol=1e-6)
            # the rows add up to the engine's own per-tensor sums
            assert spread.norm_sq == pytest.approx(rows[t].params[name].norm_sq, rel=1e-6)
            assert spread.dot_prev == pytest.approx(tensor[t].params[name].dot_prev, rel=1e-6)
            assert spread.diff_sq == pytest.approx(tensor[t].params[name].diff_sq, rel=1e-5)
        multi_dim = {n for n, s in rows[t].shapes.items() if len(s) >= 2 and n in rows[t].params}
        assert set(by_name) == multi_dim


def test_unknown_granularity_is_bad_input():
    run = open_run(SAMPLES / "digits_bn_cnn_sgd")
    with pytest.raises(BadInputError, match="granularity"):
        compute_stats(list(run.snapshots)[:2], device="cpu", granularity="neuron")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_row_sums_match_cpu():
    snapshots = list(open_run(SAMPLES / "digits_bn_cnn_sgd").snapshots)[:3]
    cpu = compute_stats(snapshots, device="cpu", granularity="row")
    cuda = compute_stats(snapshots, device="cuda", granularity="row")
    for name, spread in cpu[2].rows.items():
        np.testing.assert_allclose(cuda[2].rows[name].norms, spread.norms, rtol=1e-6)
        np.testing.assert_allclose(cuda[2].rows[name].angles, spread.angles, rtol=1e-5, atol=1e-9)


def test_a_wide_tensor_keeps_percentiles_not_rows():
    """Memory per (tensor, snapshot) stays at SPREAD_POINTS numbers per quantity however many rows a
    tensor has; its p10/p50/p90 and shares of rows are those of the rows themselves."""
    gen = torch.Generator().manual_seed(0)
    prev = torch.randn(5000, 16, generator=gen, dtype=torch.float64)
    scale = torch.linspace(0.001, 0.1, 5000, dtype=torch.float64)[:, None]
    weight = prev + scale * torch.randn(5000, 16, generator=gen, dtype=torch.float64)
    exact = row_angles(row_sums(weight, prev))
    collector = RowCollector()
    for start in range(0, 5000, 1500):  # row slices, as the planner cuts a large tensor
        collector.add(3, "w", start, weight[start:start + 1500], prev[start:start + 1500], 5000)
    assert not collector.partial  # joined and compacted once the last slice was in
    spread = collector.for_snapshot(3)["w"]
    assert not spread.exact and len(spread.angles) == len(spread.norms) == SPREAD_POINTS
    for q in (10, 50, 90):
        assert spread.percentile(spread.angles.astype(float), q) == pytest.approx(np.percentile(exact, q), rel=1e-5)
    lo, hi = np.percentile(exact, [20, 70])
    truth = np.mean((exact >= lo) & (exact <= hi))
    assert spread.share_within(spread.angles.astype(float), lo, hi) == pytest.approx(truth, abs=0.01)
    # the chord form keeps angles far below arccos's ~1e-8 floor
    tiny = row_angles(row_sums(prev + 1e-12 * torch.ones_like(prev).roll(1, 1), prev))
    assert np.all(tiny > 0) and np.all(tiny < 1e-10)
