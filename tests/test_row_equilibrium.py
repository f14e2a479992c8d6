"""Per-neuron (per output row) equilibrium: a synthetic walk whose rows have a known equilibrium, and
the AdamW sample run, whose row sums must add up to the engine's per-tensor angle."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from normscope.analysis.row_equilibrium import predicted_angle, row_angles, row_equilibrium
from normscope.api import load_trajectory
from normscope.engine.rows import row_sums
from normscope.errors import BadInputError

SAMPLES = Path(__file__).resolve().parents[1] / "sample_runs"


def _adam_like_walk(rows=64, cols=48, steps=3000, lr=0.01, wd=0.1, frozen=0, seed=0):
    """Decoupled decay plus a unit-RMS update orthogonal to each row (Adam without momentum, β₁ = 0):
    each row's norm settles at √(ηC/(2λ)) (per element 0.22 here; rows start at 0.05-0.6) and turns
    by √(2ηλ) per step. `frozen` rows get no update."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen, dtype=torch.float64) * torch.linspace(0.05, 0.6, rows)[:, None]
    snapshots = []
    for t in range(steps + 1):
        if t % 100 == 0:
            snapshots.append(w.clone())
        u = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
        u -= (u * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True) * w  # scale-invariant rows
        u *= math.sqrt(cols) / u.norm(dim=1, keepdim=True)  # unit RMS per element
        u[:frozen] = 0
        w = w * (1 - lr * wd) - lr * u
    return snapshots


def test_synthetic_walk_rows_reach_their_equilibrium():
    lr, wd = 0.01, 0.1  # relaxation 1/(2ηλ) = 500 steps; the last snapshots are 2900-3000 steps in
    snaps = _adam_like_walk()
    sums = row_sums(snaps[-1], snaps[-2])
    result = row_equilibrium("w", sums, family="adamw", lr=lr, weight_decay=wd, momentum=0.0, steps=100)
    assert result.rows == 64 and result.row_numel == 48
    assert predicted_angle("adamw", lr, wd, 0.0, 1) == pytest.approx(math.sqrt(2 * lr * wd), rel=0.01)
    # every row, whatever its initial norm, sits on both predictions
    assert result.norm_ratio_p10 > 0.95 and result.norm_ratio_p90 < 1.05
    # a 48-element row's angle over 100 steps scatters by ~10 % around its expectation
    assert 0.8 < result.angle_ratio_p10 and result.angle_ratio_p90 < 1.2 and result.within_tolerance == 1.0
    assert result.angle_ratio_median == pytest.approx(1.0, abs=0.05)
    assert result.tensor_angle_ratio == pytest.approx(1.0, abs=0.05)


def test_rows_off_equilibrium_show_in_the_spread_not_in_the_tensor_median():
    lr, wd = 0.01, 0.1
    snaps = _adam_like_walk(frozen=16)  # a quarter of the neurons are dead: they only shrink
    result = row_equilibrium("w", row_sums(snaps[-1], snaps[-2]), family="adamw", lr=lr, weight_decay=wd,
                             momentum=0.0, steps=100)
    # the tensor looks settled (dead rows shrink, so they weigh little in the tensor's sums) ...
    assert result.tensor_angle_ratio == pytest.approx(1.0, abs=0.05)
    # ... its rows do not
    assert result.angle_ratio_median == pytest.approx(1.0, abs=0.1)
    assert result.angle_ratio_p10 < 0.05 and result.within_tolerance == pytest.approx(0.75, abs=0.02)
    assert result.norm_ratio_p10 < 0.1  # the dead rows decayed toward zero


def test_bad_rows_input():
    with pytest.raises(BadInputError):
        row_sums(torch.ones(3), torch.ones(3))
    with pytest.raises(BadInputError):
        row_sums(torch.ones(3, 2), torch.ones(2, 3))
    with pytest.raises(BadInputError):
        row_equilibrium("w", row_sums(torch.ones(3, 2), torch.ones(3, 2)), family="adam", lr=0.1,
                        weight_decay=0.1, momentum=0.9, steps=1)


def test_adamw_sample_run_rows_add_up_to_the_engines_tensor_angle():
    run = SAMPLES / "digits_ln_transformer_adamw"
    manifest = json.loads((SAMPLES / "manifest.json").read_text())["runs"]["digits_ln_transformer_adamw"]
    cfg, lrs = manifest["config"], [e["lr"] for e in manifest["epochs"]]
    table = load_trajectory(run, device="cpu").table
    first, second = run / "checkpoint-414", run / "checkpoint-437"  # epochs 18 -> 19
    a, b = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    engine = table[table["path"].astype(str).str.contains("checkpoint-437")].set_index("param")
    checked = 0
    for name, w in b.items():
        if w.ndim < 2 or name not in engine.index:
            continue
        sums = row_sums(w, a[name])
        assert sums.norm_sq.sum() == pytest.approx(engine.loc[name, "norm_sq"], rel=1e-6)
        cos = sums.dot_prev.sum() / math.sqrt(sums.norm_sq.sum() * sums.prev_norm_sq.sum())
        assert math.acos(min(1.0, cos)) == pytest.approx(engine.loc[name, "angle_rad"], rel=1e-4, abs=1e-7)
        angles = row_angles(sums)
        assert np.all(np.isfinite(angles)) and len(angles) == w.shape[0]
        result = row_equilibrium(name, sums, family="adamw", lr=(lrs[17] + lrs[18]) / 2,
                                 weight_decay=cfg["weight_decay"], momentum=cfg["betas"][0], steps=23)
        assert result.angle_ratio_p10 <= result.angle_ratio_median <= result.angle_ratio_p90
        checked += 1
    assert checked >= 8


def test_row_report_from_the_engine_on_the_adamw_sample_run():
    from normscope.analysis.row_equilibrium import row_report
    from normscope.engine import compute_stats
    from normscope.sources import open_run

    stats = compute_stats(list(open_run(SAMPLES / "digits_ln_transformer_adamw").snapshots), device="cpu",
                          granularity="row")
    report = row_report(stats)
    decayed = {r.result.param for r in report}
    assert "blocks.0.attn.qkv.weight" in decayed and "embed.weight" in decayed
    assert all(not name.endswith("bias") for name in decayed)  # rows need ndim ≥ 2 (and decay)
    assert {r.snapshot for r in report} == set(range(1, 20))
    qkv = [r.result for r in report if r.result.param == "blocks.0.attn.qkv.weight"]
    assert all(r.rows == 96 and r.row_numel == 32 for r in qkv)
    # far from equilibrium as the cosine schedule takes the LR to zero: the angle falls behind
    assert qkv[-1].angle_ratio_p90 < 0.2 < qkv[8].angle_ratio_median
