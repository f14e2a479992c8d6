"""The benchmark script works end to end on a tiny run (its figures are in docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

BENCH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "benchmarks",
    "bench_engine.py",
)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_engine", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("shape", ["llm", "resnet"])
def test_generated_run_is_read_by_sources_and_engine(bench, shape, tmp_path):
    manifest = bench.generate(shape, 0.004, 2, str(tmp_path))
    files = bench.data_files(str(tmp_path))
    assert files and manifest["snapshots"] == 2
    raw = bench.measure_raw(str(tmp_path))
    assert raw["file_bytes"] == sum(os.path.getsize(f) for f in files)
    engine = bench.measure_engine(str(tmp_path), "cpu")
    assert engine["snapshots"] == 2 and engine["finite"]
    naive = bench.measure_naive(str(tmp_path))
    assert naive["norms"] == 2 * manifest["tensors"]
    with open(tmp_path / "manifest.json") as f:
        assert json.load(f) == manifest


def test_resnet152_shape_is_torchvisions_model(bench):
    import math

    shapes = bench.resnet152_shapes()
    learned = {n: s for n, s in shapes.items() if not n.endswith(("running_mean", "running_var",
                                                                    "num_batches_tracked"))}
    assert sum(math.prod(s) for s in learned.values()) == 60_192_808  # torchvision's count
    assert len(bench.float_shapes(shapes)) == 777
