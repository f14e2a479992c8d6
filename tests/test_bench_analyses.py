"""The analyses benchmark works end to end on a tiny run, and its run is what its docstring says
(its figures are in docs/benchmarks.md, "Analyses at scale")."""

from __future__ import annotations

import importlib.util
import json
import math
import os

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                     "bench_analyses.py")
BLOCKS, SNAPSHOTS = 4, 8


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_analyses", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run_dir(bench, tmp_path_factory):
    root = tmp_path_factory.mktemp("analyses-run")
    bench.generate(str(root), BLOCKS, SNAPSHOTS)
    return root


def test_the_run_holds_what_the_docstring_says(bench, run_dir):
    from normscope.api import load_trajectory

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["float_tensors"] == 5 * BLOCKS and manifest["snapshots"] == SNAPSHOTS
    traj = load_trajectory(str(run_dir), device="cpu")
    table = traj.table
    assert len(table) == SNAPSHOTS * 5 * BLOCKS
    assert traj.snapshots[-1].epoch == SNAPSHOTS - 1
    # the conv weights' norms follow the curve they were written with: down, then up after the decay
    conv = table[table["param"] == "blocks.1.conv.weight"]["norm"].to_numpy()
    scale = [bench._scale(e / (SNAPSHOTS - 1), 1) for e in range(SNAPSHOTS)]
    assert all(math.isclose(n / conv[0], s / scale[0], rel_tol=1e-5) for n, s in zip(conv, scale))
    low = min(range(SNAPSHOTS), key=lambda e: scale[e])
    assert 0 < low < SNAPSHOTS - 1
    # the optimizer's LR, x0.1 at three quarters of the run (buffers belong to no param group)
    lrs = table[table["param"] == "blocks.1.conv.weight"]["lr"].tolist()
    assert lrs == [0.1 if e / (SNAPSHOTS - 1) <= 0.75 else 0.01 for e in range(SNAPSHOTS)]


def test_its_conv_weights_read_as_scale_invariant(run_dir):
    from normscope.analysis.equilibrium import scale_invariance
    from normscope.api import load_trajectory

    verdicts = {v.param: v.verdict for v in scale_invariance(load_trajectory(str(run_dir), device="cpu"))}
    assert all(verdicts[f"blocks.{i}.conv.weight"] == "invariant" for i in range(BLOCKS)), verdicts


def test_every_stage_is_timed(bench, run_dir):
    stages = bench.run_child("stages", str(run_dir))
    assert stages.pop("rows") == SNAPSHOTS * 5 * BLOCKS
    assert set(stages) == set(bench.STAGES)
    assert all(f["wall_s"] > 0 and f["cpu_s"] >= 0 for f in stages.values())
    whole = bench.run_child("analyze_run", str(run_dir))
    assert set(whole) == {"analyze_run"} and whole["analyze_run"]["wall_s"] > 0
