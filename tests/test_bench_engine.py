"""The benchmark script works end to end on a tiny run (its figures are in docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import json
import math
import os

import pytest
import torch

from normscope.engine import compute_stats
from normscope.sources import open_run

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
    assert manifest["file_bytes"] == sum(os.path.getsize(f) for f in files)
    for read in (bench.measure_raw, bench.measure_dd):
        assert read(str(tmp_path))["file_bytes"] == manifest["file_bytes"]
    engine = bench.measure_engine(str(tmp_path), "cpu")
    assert engine["snapshots"] == 2 and engine["finite"]
    naive = bench.measure_naive(str(tmp_path))
    assert naive["norms"] == 2 * manifest["tensors"]
    with open(tmp_path / "manifest.json") as f:
        assert json.load(f) == manifest


def test_whole_processes_are_timed(bench, tmp_path):
    bench.generate("resnet", 0.002, 2, str(tmp_path))
    for result in (bench.measure_cli(str(tmp_path), "cpu", installed=False),
                   bench.measure_naive_script(str(tmp_path))):  # fmt: skip
        assert result["seconds"] > 0 and result["peak_anon_bytes"] > 0


def test_a_failing_process_is_reported(bench, tmp_path):
    with pytest.raises(SystemExit, match="failed"):
        bench.measure_cli(str(tmp_path / "missing"), "cpu", installed=False)


def test_a_run_directory_it_did_not_generate_is_refused(bench, tmp_path, monkeypatch):
    # dd and the naive loop would read the stray files too, normscope only its run: no figures
    stray = tmp_path / "resnet-0.002gb" / "resnet"
    stray.mkdir(parents=True)
    (stray / "epoch_1.pt").write_bytes(b"an older run")
    monkeypatch.setattr("sys.argv", ["bench_engine.py", "--shape", "resnet", "--size-gb", "0.002",
                                     "--dir", str(tmp_path)])  # fmt: skip
    with pytest.raises(SystemExit, match="no manifest.json"):
        bench.main()
    assert (stray / "epoch_1.pt").read_bytes() == b"an older run"


def test_hf5_shape_is_97_bf16_tensors_of_2_27_gb(bench):
    shapes = bench.hf5_shapes()
    assert len(shapes) == 97
    total = 2 * sum(math.prod(s) for s in shapes.values()) * bench.HF5_SNAPSHOTS
    assert round(total / 1e9, 2) == 2.27


def test_hf5_checkpoint_is_what_the_hf_trainer_source_reads(bench, tmp_path):
    shapes = {"model.embed_tokens.weight": (8, 4), "model.norm.weight": (4,)}
    for step in (1, 2):
        bench._write_hf_checkpoint(str(tmp_path / f"checkpoint-{step * 100}"), shapes, step,
                                   torch.bfloat16, shards=1)  # fmt: skip
    assert (tmp_path / "checkpoint-100" / "model.safetensors").is_file()
    run = open_run(str(tmp_path))
    assert [s.meta.step for s in run.snapshots] == [100, 200]
    assert set(run.snapshots[0].tensors) == {n.removeprefix("model.") for n in shapes}


def test_resnet50_shape_and_its_momentum_buffers(bench, tmp_path):
    shapes = bench.resnet50_shapes()
    params = [n for n in shapes if bench.is_parameter(n)]
    assert len(params) == 161
    assert sum(math.prod(shapes[n]) for n in params) == 25_557_032  # torchvision's count
    manifest = bench.generate("resnet50", 0, 2, str(tmp_path))
    assert manifest["tensors"] == len(bench.float_shapes(shapes)) + 161
    assert round(manifest["file_bytes"] / 1e9, 2) == 0.41  # 1.64 GB at 8 snapshots
    stats = compute_stats(open_run(str(tmp_path)).snapshots, device="cpu")
    conv = stats[1].params["conv1.weight"]
    assert conv.buf_norm_sq is not None and conv.dot_prev is not None


def test_resnet152_shape_is_torchvisions_model(bench):
    shapes = bench.resnet152_shapes()
    learned = {n: s for n, s in shapes.items() if not n.endswith(("running_mean", "running_var",
                                                                    "num_batches_tracked"))}
    assert sum(math.prod(s) for s in learned.values()) == 60_192_808  # torchvision's count
    assert len(bench.float_shapes(shapes)) == 777
