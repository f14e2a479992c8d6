"""The fused C kernel against float64 references: every dtype path, specials, pieces, fallbacks."""

from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest
import torch

from normscope.engine import fused
from normscope.engine.fused import PIECE_ELEMENTS, fused_kernel, start_fused
from normscope.engine.reduce import GroupInput
from normscope.engine.workers import CpuWorkers, Inline


@pytest.fixture(autouse=True)
def _kernel_built(monkeypatch):
    monkeypatch.delenv("NORMSCOPE_FUSED", raising=False)
    if fused_kernel() is None:
        pytest.skip("this install has no fused kernel (built without a C compiler)")


def reduce_fused(group: GroupInput, runner):
    """The kernel's sums, or None where it does not take the group."""
    finish = start_fused(group, runner)
    return None if finish is None else finish()


def _reference(group: GroupInput) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {q: [] for q in group.quantities()}
    for i, w in enumerate(group.weight):
        x = w.double()
        out["norm_sq"].append(float(x.dot(x)))
        if group.prev is not None:
            y = group.prev[i].double()
            out["dot"].append(float(x.dot(y)))
            out["diff_sq"].append(float((y - x).dot(y - x)))
        if group.buf is not None:
            m = group.buf[i].double()
            out["buf_dot"].append(float(x.dot(m)))
            out["buf_norm_sq"].append(float(m.dot(m)))
        if group.sq is not None:
            out["sq_sum"].append(float(group.sq[i].double().sum()))
    return out


# bf16 and fp16 weights (alone or with the previous snapshot's, all of one dtype) are summed in
# float32 lanes: within 8 * 2^-24 of float64 (a dot product within that of |x||y|), see _fused.c
F32_LANES = 8 * 2.0**-24


def _tolerance(group: GroupInput) -> float:
    dtypes = {t.dtype for ts in (group.weight, group.prev or []) for t in ts}
    in_lanes = group.buf is None and group.sq is None and len(dtypes) == 1 and dtypes <= {
        torch.bfloat16, torch.float16}  # fmt: skip
    return F32_LANES if in_lanes else 1e-12


def _assert_close(got: dict[str, list[float]], want: dict[str, list[float]],
                  group: GroupInput) -> None:  # fmt: skip
    assert got.keys() == want.keys()
    rel = _tolerance(group)
    norms = want["norm_sq"]
    prev_norms = [float(y.double().dot(y.double())) for y in group.prev or []]
    for q, expected in want.items():
        for i, (g, w) in enumerate(zip(got[q], expected, strict=True)):
            if q == "dot" and rel > 1e-12:  # a dot product's error is relative to |x||y|
                scale = (norms[i] * prev_norms[i]) ** 0.5
                assert abs(g - w) <= rel * scale + 1e-300, (q, i)
            else:
                assert g == pytest.approx(w, rel=rel, abs=1e-300), (q, i)


def _tensors(numels: list[int], dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, generator=g) + 0.25).to(dtype) for n in numels]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "streams", ["weight", "prev", "optimizer", "adam", "first_optimizer", "first_adam"])
def test_same_dtype_streams_match_float64(dtype, streams):
    # lengths around the kernel's blocks (512), chunks (2048, prefetched from 4096 on) and pages
    numels = [0, 1, 7, 513, 4096, 4097, 8193, 100_003]
    weight = _tensors(numels, dtype, 1)
    first = streams.startswith("first_")  # the first snapshot: optimizer state, no previous
    group = GroupInput(
        weight=weight,
        prev=_tensors(numels, dtype, 2) if streams not in ("weight",) and not first else None,
        buf=_tensors(numels, dtype, 3) if streams.endswith(("optimizer", "adam")) else None,
        sq=[t.abs() for t in _tensors(numels, dtype, 4)] if streams.endswith("adam") else None,
    )
    result = reduce_fused(group, Inline())
    assert result is not None
    _assert_close(result.sums, _reference(group), group)
    assert result.nonfinite == [0] * len(numels)


def test_mixed_dtypes_bf16_weights_with_fp32_optimizer_state():
    numels = [5, 600, 70_001]
    group = GroupInput(
        weight=_tensors(numels, torch.bfloat16, 1),
        prev=_tensors(numels, torch.float16, 2),
        buf=_tensors(numels, torch.float32, 3),
        sq=[t.abs() for t in _tensors(numels, torch.float32, 4)],
    )
    result = reduce_fused(group, Inline())
    _assert_close(result.sums, _reference(group), group)


def test_adam_second_moment_without_momentum_uses_the_general_path():
    numels = [3, 9000]
    group = GroupInput(
        weight=_tensors(numels, torch.float32, 1),
        sq=[t.abs() for t in _tensors(numels, torch.float32, 2)],
    )
    _assert_close(reduce_fused(group, Inline()).sums, _reference(group), group)


def test_half_conversion_of_subnormals_extremes_and_signed_zero():
    # every finite fp16 bit pattern, subnormals and ±65504 included
    bits = torch.arange(0, 1 << 16, dtype=torch.int32)
    finite = bits[((bits >> 10) & 0x1F) != 0x1F].to(torch.int16)
    values = finite.view(torch.float16)
    group = GroupInput(weight=[values], prev=[values.flip(0)])
    result = reduce_fused(group, Inline())
    _assert_close(result.sums, _reference(group), group)


@pytest.mark.parametrize("portable", [False, True], ids=["as_the_kernel_does", "by_bits"])
def test_half_to_float_matches_torch_for_every_bit_pattern(portable):
    # the kernel converts fp16 by F16C where the CPU has it, else by bits: both must be exact
    from normscope.engine import _fused  # lazy: absent where the kernel was not built

    convert = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                               ctypes.c_int)(_fused.half_to_float_address)  # fmt: skip
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    got = np.empty(bits.size, dtype=np.float32)
    convert(bits.size, bits.ctypes.data, got.ctypes.data, int(portable))
    want = torch.from_numpy(bits.view(np.int16).copy()).view(torch.float16).float().numpy()
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_nonfinite_values_are_counted(dtype):
    x = torch.ones(10_000, dtype=dtype)
    x[[3, 500, 9999]] = torch.tensor([float("nan"), float("inf"), float("-inf")], dtype=dtype)
    clean = torch.ones(10, dtype=dtype)
    result = reduce_fused(GroupInput(weight=[x, clean], prev=[x.clone(), clean]), Inline())
    assert result.nonfinite == [3, 0]
    assert result.sums["norm_sq"][1] == 10.0
    assert not torch.isfinite(torch.tensor(result.sums["norm_sq"][0]))


def test_non_contiguous_input_is_read_by_value():
    base = torch.randn(20_000)
    strided = base[::2]
    assert not strided.is_contiguous()
    group = GroupInput(weight=[strided], prev=[base[1::2]])
    _assert_close(reduce_fused(group, Inline()).sums, _reference(group), group)


def test_long_tensor_cut_into_pieces_over_two_workers_matches():
    n = 2 * PIECE_ELEMENTS + 12_345
    weight = _tensors([n, 10, n // 3], torch.bfloat16, 5)
    prev = _tensors([n, 10, n // 3], torch.bfloat16, 6)
    group = GroupInput(weight=weight, prev=prev)
    workers = CpuWorkers(2)
    try:
        split = reduce_fused(group, workers)
    finally:
        workers.close()
    inline = reduce_fused(group, Inline())
    _assert_close(split.sums, _reference(group), group)
    for q in inline.sums:  # same pieces, same order within each: bit-identical
        assert split.sums[q] == inline.sums[q]


def test_balanced_spans_cover_every_piece_once():
    lengths = [5, 1, 100, 3, 3, 3, 50, 0, 7]
    for parts in (1, 2, 3, 8):
        spans = fused._balanced_spans(lengths, parts)
        assert len(spans) <= parts
        covered = [i for lo, hi in spans for i in range(lo, hi)]
        assert covered == list(range(len(lengths)))


def test_unsupported_inputs_are_left_to_the_torch_kernels():
    assert reduce_fused(GroupInput(weight=[torch.ones(4, dtype=torch.float8_e4m3fn)]),
                        Inline()) is None


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("NORMSCOPE_FUSED", "0")
    assert fused_kernel() is None
    assert reduce_fused(GroupInput(weight=[torch.ones(4)]), Inline()) is None


def test_an_install_without_the_kernel_uses_the_torch_kernels(monkeypatch):
    monkeypatch.setattr(fused, "MODULE", "normscope.engine._no_such_kernel")
    fused._load.cache_clear()
    try:
        assert fused_kernel() is None
        status = fused.kernel_status()
        assert not status.active and "not built" in status.detail
        assert reduce_fused(GroupInput(weight=[torch.ones(4)]), Inline()) is None
    finally:
        fused._load.cache_clear()


def test_the_kernel_is_the_package_s_own_module():
    from normscope.engine import _fused  # lazy: absent where the kernel was not built

    status = fused.kernel_status()
    assert status.active, status.detail
    assert os.path.dirname(_fused.__file__) == os.path.dirname(fused.__file__)


def _bf16_sums(x: np.ndarray, y: np.ndarray | None, path: int) -> list[float]:
    """The kernel's bf16 sums of words `x` (and `y`): path 0 as the kernel reduces (float32
    lanes where trusted), 1 the float64 loops a span falls back to."""
    from normscope.engine import _fused  # lazy: absent where the kernel was not built

    sums = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                            ctypes.c_void_p, ctypes.c_int)(_fused.bf16_sums_address)  # fmt: skip
    got = np.zeros(3)
    sums(x.size, x.ctypes.data, None if y is None else y.ctypes.data, got.ctypes.data, path)
    return got.tolist()


def _bf16_exact(x: np.ndarray, y: np.ndarray | None) -> tuple[list[float], float]:
    """float64 sums of bf16 words, and |x||y| (the scale of a dot product's error)."""
    a = torch.from_numpy(x.view(np.int16).copy()).view(torch.bfloat16).double()
    if y is None:
        return [float(a.dot(a)), 0.0, 0.0], 0.0
    b = torch.from_numpy(y.view(np.int16).copy()).view(torch.bfloat16).double()
    return [float(a.dot(a)), float(a.dot(b)), float((b - a).dot(b - a))], float(a.norm() * b.norm())


def _assert_bf16_close(got: list[float], x: np.ndarray, y: np.ndarray | None, rel: float) -> None:
    want, scale = _bf16_exact(x, y)
    assert got[0] == pytest.approx(want[0], rel=rel, abs=1e-300), x.size
    assert abs(got[1] - want[1]) <= max(rel * scale, 1e-12 * abs(want[1]), 1e-300), x.size
    assert got[2] == pytest.approx(want[2], rel=rel, abs=1e-300), x.size


def test_fp16_float32_lanes_stay_within_their_bound():
    # fp16 weights, alone and with the previous snapshot's: summed in float32 lanes (within the
    # bound), where the same weights beside a momentum buffer go through float64 throughout
    numels = [31, 32, 33, 1000, 4096, 4097, 100_003]
    weight, prev, buf = (_tensors(numels, torch.float16, seed) for seed in (11, 12, 13))
    for group in (GroupInput(weight=weight), GroupInput(weight=weight, prev=prev)):
        lanes = reduce_fused(group, Inline())
        _assert_close(lanes.sums, _reference(group), group)
        exact = reduce_fused(GroupInput(weight=weight, prev=group.prev, buf=buf), Inline())
        _assert_close({q: exact.sums[q] for q in lanes.sums}, _reference(group),
                      GroupInput(weight=weight, prev=group.prev, buf=buf))  # fmt: skip
        assert lanes.sums["norm_sq"][-1] != exact.sums["norm_sq"][-1]  # the lanes did run


def _bf16_words(values: torch.Tensor) -> np.ndarray:
    return values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16).copy()


_BF16_PATHS = pytest.mark.parametrize("path", [0, 1], ids=["as_the_kernel_does", "float64_loops"])


@_BF16_PATHS
@pytest.mark.parametrize("with_prev", [False, True], ids=["weights", "with_previous"])
def test_bf16_sums_match_float64_for_every_bit_pattern_and_tail(path, with_prev):
    # bf16 is reduced in float32 lanes (32 elements a step), and by the float64 loops where those
    # could be off (below): each must hold its accuracy over every finite bf16 value (subnormals
    # and extremes included) and over every length of the tail after the last step
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    finite = bits[((bits >> 7) & 0xFF) != 0xFF]
    rng = np.random.default_rng(0)
    for n in [*range(0, 70), 1000, finite.size]:
        x = finite[:n] if n == finite.size else rng.choice(finite, n)
        y = rng.permutation(x) if with_prev else None
        _assert_bf16_close(_bf16_sums(x, y, path), x, y, F32_LANES if path == 0 else 1e-12)


@pytest.mark.parametrize("n", [32, 64, 96, 127, 128, 129, 1000, 2048, 4096, 100_003])
def test_bf16_float32_lanes_stay_within_their_bound(n):
    # weights of a trained layer and a small update: the float32 lanes are taken, and hold the
    # bound against float64 (they are not the float64 loops' bits, so the path did run)
    g = torch.Generator().manual_seed(n)
    w = torch.randn(n, generator=g) * 0.02 + 0.001
    x, y = _bf16_words(w), _bf16_words(w + torch.randn(n, generator=g) * 1e-4)
    got = _bf16_sums(x, y, 0)
    _assert_bf16_close(got, x, y, F32_LANES)
    if n >= 1000:
        assert got != _bf16_sums(x, y, 1)


@pytest.mark.parametrize("scale", [2.0**-120, 2.0**-80, 2.0**-64, 2.0**62, 2.0**70, 2.0**120])
@pytest.mark.parametrize("with_prev", [False, True], ids=["weights", "with_previous"])
def test_bf16_values_float32_cannot_square_are_summed_in_float64(scale, with_prev):
    # squares below float32's normal range round to multiples of 2^-149, and above 2^64 overflow:
    # such spans are summed again in float64 lanes, so the sums are float64's
    g = torch.Generator().manual_seed(7)
    n = 4096 + 37
    w = torch.randn(n, generator=g, dtype=torch.float64) * scale
    x = _bf16_words(w)
    y = _bf16_words(w * (1 + torch.randn(n, generator=g, dtype=torch.float64) * 0.01)) if (
        with_prev) else None  # fmt: skip
    _assert_bf16_close(_bf16_sums(x, y, 0), x, y, 1e-12)


def test_bf16_a_few_tiny_values_among_normal_ones_stay_within_the_bound():
    g = torch.Generator().manual_seed(8)
    w = torch.randn(4096, generator=g) * 0.02
    w[::97] = 1e-30  # squares underflow float32, but are nothing beside the others
    x, y = _bf16_words(w), _bf16_words(w * 1.001)
    _assert_bf16_close(_bf16_sums(x, y, 0), x, y, F32_LANES)


def test_bf16_frozen_and_zero_tensors_give_exact_zeros():
    g = torch.Generator().manual_seed(9)
    w = torch.randn(4096, generator=g) * 0.02
    x = _bf16_words(w)
    frozen = _bf16_sums(x, x.copy(), 0)  # a layer that did not move: no update at all
    assert frozen[2] == 0.0
    _assert_bf16_close(frozen, x, x, F32_LANES)
    signed = x.copy()
    signed[x == 0] = 0x8000
    zeros = np.zeros_like(x)
    zeros[::3] = 0x8000  # -0.0
    assert _bf16_sums(zeros, None, 0) == [0.0, 0.0, 0.0]
    from_zero = _bf16_sums(zeros, x, 0)  # a layer started at zero, then trained
    assert from_zero[:2] == [0.0, 0.0]
    _assert_bf16_close(from_zero, zeros, x, F32_LANES)
    to_zero = _bf16_sums(x, zeros, 0)  # a layer zeroed: the dot product is exactly 0
    assert to_zero[1] == 0.0
    _assert_bf16_close(to_zero, x, zeros, F32_LANES)
