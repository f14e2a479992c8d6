"""`compute_stats(granularity="row")`: per-row sums from the engine's own pass, on every sample layout,
checked against the checkpoint files reduced directly, and with tensors cut into row slices."""

from pathlib import Path

import numpy as np
import pytest
import torch

from normscope.engine import compute_stats
from normscope.engine.rows import row_sums
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
        for name, sums in by_name.items():
            key = name if name in current else next(k for k in current if k.endswith(name))
            expected = row_sums(current[key], previous[key])
            np.testing.assert_allclose(sums.norm_sq, expected.norm_sq, rtol=1e-12)
            np.testing.assert_allclose(sums.dot_prev, expected.dot_prev, rtol=1e-12)
            assert sums.norm_sq.sum() == pytest.approx(rows[t].params[name].norm_sq, rel=1e-6)
            assert sums.dot_prev.sum() == pytest.approx(tensor[t].params[name].dot_prev, rel=1e-6)
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
    for name, sums in cpu[2].rows.items():
        np.testing.assert_allclose(cuda[2].rows[name].norm_sq, sums.norm_sq, rtol=1e-9)
        np.testing.assert_allclose(cuda[2].rows[name].dot_prev, sums.dot_prev, rtol=1e-9)
