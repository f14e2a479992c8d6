"""The fused kernel adds in one fixed order, so its sums are the same bits on every CPU.

`_fused.c` keeps each sum in lanes of a fixed width (element i adds to lane i % W), adds the lanes
in a fixed tree and the tail after them in element order, and never fuses a product into an
addition. Each lane is an independent IEEE sum, so whichever vector ISA the loader picks (AVX-512,
AVX2, SSE2, NEON) the bits are the same, and a report of a run does not change with the machine
that read it. These tests hold the kernel, on this machine, to a numpy model of that order, bit
for bit: a kernel that reassociated its sums for the vector width at hand, or fused a multiply
into an add, would differ from the model in the last bits.
"""

from __future__ import annotations

import numpy as np
import pytest

from normscope.engine.fused import COLUMNS, dtype_codes, fused_kernel

pytestmark = pytest.mark.skipif(fused_kernel() is None, reason="the fused kernel is not built")

BLOCK = 512  # `_fused.c`: streams of other dtypes are converted BLOCK elements at a time
CHUNK = 2048  # `_fused.c`: entries longer than 2 * CHUNK are reduced CHUNK elements at a time
LANES = 8  # `_fused.c`: NS_LANES, float64 lanes of every sum
F32_STEPS, F32_WIDTH = 4, 16  # `_fused.c`: NS_F32_STEPS steps of NS_F32_WIDTH float32 lanes
LENGTHS = [0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 127, 128, 129, 1000, 4096, 4097, 10_007]


def _kernel_sums(streams: dict[str, np.ndarray], dtype: str | dict[str, str]) -> np.ndarray:
    """One entry through the kernel: `streams` x (weights) and any of y, m, v, all of `dtype` or
    of the dtype given per stream (numpy arrays of its bytes: uint16 words for bf16)."""
    kernel = fused_kernel()
    dtypes = dtype if isinstance(dtype, dict) else dict.fromkeys(streams, dtype)
    x = streams["x"]
    numel = np.array([x.size], dtype=np.int64)
    keep = []
    args = []
    for name in ("x", "y", "m", "v"):
        if name in streams:
            pointers = np.array([streams[name].ctypes.data], dtype=np.int64)
            codes = np.array([dtype_codes()[dtypes[name]]], dtype=np.int32)
            keep += [pointers, codes]
            args.append((pointers.ctypes.data, codes.ctypes.data))
        else:
            args.append(None)
    out = np.zeros((1, len(COLUMNS)), dtype=np.float64)
    kernel.reduce(1, numel.ctypes.data, args, out.ctypes.data)
    return out[0]


def _tree(lanes: np.ndarray) -> float:
    """The lanes' total: lane j with lane j + W/2, then j + W/4, ... (`total_W`)."""
    t = lanes.copy()
    w = t.size // 2
    while w >= 1:
        t[:w] = t[:w] + t[w:2 * w]
        w //= 2
    return float(t[0])


def _lane_sum(terms: np.ndarray, width: int) -> float:
    """sum(terms) as the kernel adds them: `width` lanes in element order, the tree, then the
    tail after the last full step, in order."""
    whole = terms.size - terms.size % width
    lanes = np.zeros(width)
    for row in terms[:whole].reshape(-1, width):
        lanes = lanes + row
    total = 0.0
    for term in terms[whole:]:
        total += float(term)
    return _tree(lanes) + total


def _spans(n: int) -> list[tuple[int, int]]:
    if n <= 2 * CHUNK:
        return [(0, n)]
    return [(lo, min(n, lo + CHUNK)) for lo in range(0, n, CHUNK)]


def _model_float64_loops(values: dict[str, np.ndarray], block: int | None = None) -> np.ndarray:
    """The float64 loops' sums of streams given as float64 values, span by span (and `block`
    by `block` within a span, as streams of different dtypes are converted), each added to the
    row."""
    width = LANES
    out = np.zeros(len(COLUMNS))
    spans = _spans(values["x"].size)
    if block is not None:
        spans = [(b, min(hi, b + block)) for lo, hi in spans for b in range(lo, hi, block)]
    for lo, hi in spans:
        x = values["x"][lo:hi]
        terms = {0: x * x}
        if "y" in values:
            y = values["y"][lo:hi]
            d = y - x
            terms[1], terms[2] = x * y, d * d
        if "m" in values:
            m = values["m"][lo:hi]
            terms[3], terms[4] = x * m, m * m
        if "v" in values:
            terms[5] = values["v"][lo:hi]
        for k, t in terms.items():
            out[k] = out[k] + _lane_sum(t, width)
    return out


def _bf16(words: np.ndarray) -> np.ndarray:
    return (words.astype(np.uint32) << 16).view(np.float32)


def _model_float32_lanes(x: np.ndarray, y: np.ndarray | None) -> np.ndarray:
    """The 16-bit path's sums of float32 values (bf16 or fp16, exact in float32): F32_WIDTH
    float32 lanes over up to F32_STEPS steps of F32_WIDTH elements, lanes j and j + LANES added in
    float32 and widened into float64 lane j; the tail after the last step in float64, in order."""
    out = np.zeros(len(COLUMNS))
    for lo, hi in _spans(x.size):
        a_all, b_all = x[lo:hi], None if y is None else y[lo:hi]
        steps = a_all.size - a_all.size % F32_WIDTH
        acc = np.zeros((3, LANES))
        for group in range(0, steps, F32_WIDTH * F32_STEPS):
            lanes = np.zeros((3, F32_WIDTH), dtype=np.float32)
            for at in range(group, min(steps, group + F32_WIDTH * F32_STEPS), F32_WIDTH):
                a = a_all[at:at + F32_WIDTH]
                lanes[0] = lanes[0] + a * a
                if b_all is not None:
                    b = b_all[at:at + F32_WIDTH]
                    d = b - a
                    lanes[1] = lanes[1] + a * b
                    lanes[2] = lanes[2] + d * d
            acc = acc + (lanes[:, :LANES] + lanes[:, LANES:]).astype(np.float64)
        tail = np.zeros(3)
        for i in range(steps, a_all.size):
            a = float(a_all[i])
            tail[0] += a * a
            if b_all is not None:
                b = float(b_all[i])
                tail[1] += a * b
                tail[2] += (b - a) * (b - a)
        for k in range(3 if b_all is not None else 1):
            out[k] = out[k] + (_tree(acc[k]) + tail[k])
    return out


def _trained(n: int, seed: int, scale: float = 0.02) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(n) * scale + 0.001


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("streams", ["x", "xy", "xm", "xym", "xmv", "xymv", "xv", "xyv"])
@pytest.mark.parametrize("n", LENGTHS)
def test_float_sums_are_the_fixed_lane_order_bit_for_bit(dtype, streams, n):
    np_dtype = np.float32 if dtype == "float32" else np.float64
    arrays = {}
    for k, name in enumerate(streams):
        values = _trained(n, seed=100 * n + k)
        arrays[name] = np.abs(values).astype(np_dtype) if name == "v" else values.astype(np_dtype)
    got = _kernel_sums(arrays, dtype)
    want = _model_float64_loops({k: a.astype(np.float64) for k, a in arrays.items()})
    assert got.tolist() == want.tolist()


@pytest.mark.parametrize("n", LENGTHS)
def test_streams_of_different_dtypes_are_the_float64_loops_block_by_block(n):
    # fp32 weights beside the previous snapshot in fp64 and a bf16 momentum: each stream is
    # converted to float64 BLOCK elements at a time, then summed by the float64 loops
    x = _trained(n, seed=n).astype(np.float32)
    y = _trained(n, seed=n + 1)
    m = (_trained(n, seed=n + 2).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    got = _kernel_sums({"x": x, "y": y, "m": m},
                       {"x": "float32", "y": "float64", "m": "bfloat16"})  # fmt: skip
    want = _model_float64_loops({"x": x.astype(np.float64), "y": y,
                                 "m": _bf16(m).astype(np.float64)}, block=BLOCK)  # fmt: skip
    assert got.tolist() == want.tolist()


@pytest.mark.parametrize("with_prev", [False, True], ids=["weights", "with_previous"])
@pytest.mark.parametrize("n", LENGTHS)
def test_bf16_float32_lanes_are_the_fixed_order_bit_for_bit(with_prev, n):
    w = _trained(n, seed=n)
    x = (w.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    moved = w + np.random.default_rng(n + 1).standard_normal(n) * 1e-3
    y = (moved.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16) if with_prev else None
    got = _kernel_sums({"x": x} if y is None else {"x": x, "y": y}, "bfloat16")
    want = _model_float32_lanes(_bf16(x), None if y is None else _bf16(y))
    assert got.tolist() == want.tolist()


@pytest.mark.parametrize("with_prev", [False, True], ids=["weights", "with_previous"])
@pytest.mark.parametrize("n", LENGTHS)
def test_fp16_float32_lanes_are_the_fixed_order_bit_for_bit(with_prev, n):
    x = _trained(n, seed=n).astype(np.float16)
    y = (x.astype(np.float64) + np.random.default_rng(n).standard_normal(n) * 1e-3).astype(
        np.float16) if with_prev else None  # fmt: skip
    got = _kernel_sums({"x": x.view(np.uint16)} if y is None else
                       {"x": x.view(np.uint16), "y": y.view(np.uint16)}, "float16")  # fmt: skip
    want = _model_float32_lanes(x.astype(np.float32), None if y is None else y.astype(np.float32))
    assert got.tolist() == want.tolist()


@pytest.mark.parametrize("n", [33, 4097])
def test_bf16_spans_the_lanes_cannot_hold_are_the_float64_loops_bit_for_bit(n):
    # squares overflow float32: the span is summed again by the float64 loops, in their order
    x = (_trained(n, seed=n, scale=2.0**70).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    got = _kernel_sums({"x": x}, "bfloat16")
    want = _model_float64_loops({"x": _bf16(x).astype(np.float64)})
    assert got.tolist() == want.tolist()
