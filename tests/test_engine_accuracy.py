"""The engine's arithmetic against float64 references: large tensors, every float dtype, edge cases."""

from __future__ import annotations

import math

import pytest
import torch
from engine_helpers import f64, rel, snapshot

from normscope.engine import compute_stats
from normscope.engine.chunking import CHUNK, fill_rows, row_layout
from normscope.engine.reduce import GroupInput, reduce_group

# The CPU engine has two kernels (fused C, torch row blocks); both must meet every test here.
pytestmark = pytest.mark.usefixtures("each_cpu_kernel", "single_threaded_torch")


def _pair(
    numel: int, dtype: torch.dtype, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight and its slightly moved successor, with a non-zero mean (hard for fp32 sums)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(numel, generator=g) + 0.5
    b = a + 1e-3 * torch.randn(numel, generator=g)
    return a.to(dtype), b.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_tensor_matches_float64_to_1e6(dtype):
    # 3.2e7 elements: plain fp32 reductions are off by ~1e-4 here; bf16 per-chunk norms by ~1e-3.
    numel = 32_000_001
    a, b = _pair(numel, dtype, seed=1)
    snaps = [snapshot(0, {"w": a.view(-1, 1)}), snapshot(1, {"w": b.view(-1, 1)})]
    stats = compute_stats(snaps, device="cpu")
    x, y = f64(b), f64(a)
    p = stats[1].params["w"]
    assert rel(p.norm_sq, torch.dot(x, x).item()) < 1e-6
    assert rel(p.dot_prev, torch.dot(x, y).item()) < 1e-6
    assert rel(p.diff_sq, torch.dot(x - y, x - y).item()) < 1e-6
    assert rel(stats[0].params["w"].norm_sq, torch.dot(y, y).item()) < 1e-6
    assert p.numel == numel and p.nonfinite == 0


def test_fp16_and_fp64_match_float64():
    for dtype in (torch.float16, torch.float64):
        a, b = _pair(3_000_000, dtype, seed=2)
        stats = compute_stats(
            [snapshot(0, {"w": a}), snapshot(1, {"w": b})], device="cpu"
        )
        x, y = f64(b), f64(a)
        p = stats[1].params["w"]
        assert rel(p.norm_sq, torch.dot(x, x).item()) < 1e-6, dtype
        assert rel(p.dot_prev, torch.dot(x, y).item()) < 1e-6, dtype
        assert rel(p.diff_sq, torch.dot(x - y, x - y).item()) < 1e-6, dtype


def test_dot_of_unrelated_tensors_is_exact_not_polarised():
    # <a, b> ~ 0 against |a|^2 ~ n: a dot recovered from norms and |a-b|^2 would lose every digit.
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(1_000_003, generator=g), torch.randn(1_000_003, generator=g)
    stats = compute_stats([snapshot(0, {"w": a}), snapshot(1, {"w": b})], device="cpu")
    ref = torch.dot(f64(a), f64(b)).item()
    assert abs(stats[1].params["w"].dot_prev - ref) < 1e-6 * abs(ref)


def test_many_small_tensors_of_mixed_dtypes_in_one_snapshot():
    g = torch.Generator().manual_seed(4)
    sizes = [1, 3, 64, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17, 100_000]
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
    first, second = {}, {}
    for i, n in enumerate(sizes * 4):
        dtype = dtypes[i % 4]
        first[f"p{i}"] = torch.randn(n, generator=g).to(dtype)
        second[f"p{i}"] = (
            first[f"p{i}"].double()
            + 0.01 * torch.randn(n, generator=g, dtype=torch.float64)
        ).to(dtype)
    stats = compute_stats([snapshot(0, first), snapshot(1, second)], device="cpu")
    for name, t in second.items():
        x, y = f64(t), f64(first[name])
        p = stats[1].params[name]
        assert rel(p.norm_sq, torch.dot(x, x).item()) < 1e-6, name
        assert rel(p.dot_prev, torch.dot(x, y).item()) < 1e-6, name
        assert rel(p.diff_sq, torch.dot(x - y, x - y).item()) < 1e-6, name
        assert stats[1].dtypes[name] == str(t.dtype).removeprefix("torch.")


def test_nonfinite_values_are_counted_and_propagate():
    w = torch.randn(3 * CHUNK)
    w[5], w[CHUNK + 1], w[CHUNK + 2], w[-1] = (
        float("nan"),
        float("inf"),
        float("-inf"),
        float("nan"),
    )
    clean = torch.randn(100)
    stats = compute_stats(
        [
            snapshot(0, {"w": w, "clean": clean}),
            snapshot(1, {"w": w.clone(), "clean": clean}),
        ],
        device="cpu",
    )
    p = stats[1].params["w"]
    assert p.nonfinite == 4
    assert math.isnan(p.norm_sq) and math.isnan(p.diff_sq)
    assert stats[1].params["clean"].nonfinite == 0
    assert stats[1].params["clean"].diff_sq == 0.0


def test_finite_values_whose_squares_overflow_fp32_are_exact():
    w = torch.randn(2 * CHUNK)
    w[10] = 3e30  # x*x overflows float32; the row is recomputed in float64
    p = compute_stats([snapshot(0, {"w": w})], device="cpu")[0].params["w"]
    assert p.nonfinite == 0
    assert rel(p.norm_sq, torch.dot(f64(w), f64(w)).item()) < 1e-12


def test_empty_and_zero_dim_tensors():
    stats = compute_stats(
        [
            snapshot(0, {"empty": torch.zeros(0, 5), "scalar": torch.tensor(3.0)}),
            snapshot(1, {"empty": torch.zeros(0, 5), "scalar": torch.tensor(-2.0)}),
        ],
        device="cpu",
    )
    e, s = stats[1].params["empty"], stats[1].params["scalar"]
    assert (e.numel, e.norm_sq, e.dot_prev, e.diff_sq) == (0, 0.0, 0.0, 0.0)
    assert (s.numel, s.norm_sq, s.dot_prev, s.diff_sq) == (1, 4.0, -6.0, 25.0)
    assert stats[1].shapes == {"empty": (0, 5), "scalar": ()}


def test_zero_tensor_has_exactly_zero_norm():
    stats = compute_stats(
        [snapshot(0, {"big": torch.randn(50_000) * 1e3, "bias": torch.zeros(7)})],
        device="cpu",
    )
    assert stats[0].params["bias"].norm_sq == 0.0


def test_fill_rows_packs_and_zero_pads_across_blocks():
    tensors = [
        torch.arange(1, n + 1, dtype=torch.float32) for n in (0, 5, 2 * 8 + 3, 8)
    ]
    layout = row_layout([t.numel() for t in tensors], chunk=8)
    assert layout.total_rows == 1 + 3 + 1
    block = torch.full((2, 8), -1.0, dtype=torch.float64)
    fill_rows(
        block, layout, tensors, 1, 3
    )  # rows 1-2: the second tensor's first two rows
    assert block.tolist() == [list(range(1, 9)), list(range(9, 17))]
    fill_rows(
        block, layout, tensors, 3, 5
    )  # its padded last row, then the fourth tensor
    assert block.tolist() == [[17, 18, 19, 0, 0, 0, 0, 0], list(range(1, 9))]
    assert layout.owners().tolist() == [1, 2, 2, 2, 3]


def test_reduce_group_with_optimizer_streams_matches_float64():
    g = torch.Generator().manual_seed(5)
    w = [torch.randn(n, generator=g).bfloat16() for n in (10, 70_000)]
    prev = [t.float() + 0.1 for t in w]
    buf = [torch.randn(t.numel(), generator=g) for t in w]
    sq = [torch.rand(t.numel(), generator=g) for t in w]
    out = reduce_group(GroupInput(w, prev, buf, sq), block_rows=3)
    for i in range(2):
        x, y, m, v = f64(w[i]), f64(prev[i]), f64(buf[i]), f64(sq[i])
        expected = {"norm_sq": x @ x, "dot": x @ y, "diff_sq": (x - y) @ (x - y),
                    "buf_dot": x @ m, "buf_norm_sq": m @ m, "sq_sum": v.sum()}  # fmt: skip
        for q, ref in expected.items():
            assert rel(out.sums[q][i], ref.item()) < 1e-6, (q, i)


def test_small_tensors_count_nonfinite_and_survive_fp32_overflow():
    bias = torch.tensor([1.0, float("nan"), 3e30, float("-inf"), 2.0])
    scale = torch.tensor([3e30, 4e30])  # squares overflow float32, not float64
    stats = compute_stats(
        [
            snapshot(0, {"bias": bias, "scale": scale}),
            snapshot(1, {"bias": bias, "scale": scale * 2}),
        ],
        device="cpu",
    )
    b, s = stats[1].params["bias"], stats[1].params["scale"]
    assert b.nonfinite == 2 and math.isnan(b.norm_sq)
    assert s.nonfinite == 0
    x, y = f64(scale * 2), f64(scale)
    assert rel(s.norm_sq, (x @ x).item()) < 1e-12
    assert rel(s.dot_prev, (x @ y).item()) < 1e-12
    assert rel(s.diff_sq, ((x - y) @ (x - y)).item()) < 1e-12


def test_rows_split_between_worker_threads_give_identical_sums():
    from normscope.engine.reduce import split_rows
    from normscope.engine.workers import CpuWorkers

    assert split_rows(10, 4, 2) == [(0, 4), (4, 10)]  # whole 4-row blocks, 1 + 2 of them
    assert split_rows(0, 4, 2) == []
    g = torch.Generator().manual_seed(6)
    group = GroupInput(
        [torch.randn(300_000, generator=g).bfloat16(), torch.randn(9_000, generator=g)]
    )
    alone = reduce_group(group, block_rows=4)
    workers = CpuWorkers(workers=3)
    try:
        split = reduce_group(group, block_rows=4, runner=workers)
    finally:
        workers.close()
    assert split.sums == alone.sums and split.nonfinite == alone.nonfinite
