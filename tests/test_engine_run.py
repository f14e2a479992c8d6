"""compute_stats over whole runs: changing parameter sets, optimizer state, memory bound, read once,
progress, bad input and device selection."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import HeldBytes, MemoryRef, f64, rel, snapshot, tracked

from normscope.engine import compute_stats, reduce_snapshot_pair
from normscope.errors import BadInputError
from normscope.snapshot import Snapshot, SnapshotMeta

# The CPU engine has two kernels (fused C, torch row blocks); both must meet every test here.
pytestmark = pytest.mark.usefixtures("each_cpu_kernel", "single_threaded_torch")


def _run(steps: int = 5, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """A small drifting model: conv-like weights, a bias, a norm scale, a bf16 embedding."""
    g = torch.Generator().manual_seed(seed)
    w = {
        "conv.weight": torch.randn(64, 32, 3, 3, generator=g),
        "conv.bias": torch.randn(64, generator=g),
        "bn.weight": torch.ones(64),
        "embed.weight": torch.randn(1000, 48, generator=g).bfloat16(),
    }
    out = []
    for _ in range(steps):
        w = {
            k: (
                v.double() * 0.99
                + 0.01 * torch.randn(v.shape, generator=g, dtype=torch.float64)
            ).to(v.dtype)
            for k, v in w.items()
        }
        out.append(w)
    return out


def _reference(tensors: list[dict[str, torch.Tensor]]) -> list[dict[str, tuple]]:
    ref = []
    for t, snap in enumerate(tensors):
        row = {}
        for name, w in snap.items():
            x = f64(w)
            prev = tensors[t - 1].get(name) if t else None
            if prev is not None and prev.shape == w.shape:
                y = f64(prev)
                row[name] = (x @ x, x @ y, (x - y) @ (x - y))
            else:
                row[name] = (x @ x, None, None)
        ref.append(row)
    return ref


def _check(stats, tensors) -> None:
    for got, want in zip(stats, _reference(tensors), strict=True):
        assert list(got.params) == list(want)
        for name, (norm_sq, dot, diff_sq) in want.items():
            p = got.params[name]
            assert rel(p.norm_sq, norm_sq.item()) < 1e-6, name
            if dot is None:
                assert p.dot_prev is None and p.diff_sq is None, name
            else:
                assert rel(p.dot_prev, dot.item()) < 1e-6, name
                assert rel(p.diff_sq, diff_sq.item()) < 1e-6, name


def test_run_matches_float64_for_every_bucket_size():
    tensors = _run()
    snaps = [snapshot(i, t) for i, t in enumerate(tensors)]
    for bucket_bytes in (
        256 * 2**20,
        200_000,
        30_000,
        3_000,
    ):  # one bucket ... row slices of every weight
        stats = compute_stats(snaps, device="cpu", bucket_bytes=bucket_bytes)
        _check(stats, tensors)
        assert [s.meta.step for s in stats] == [0, 1, 2, 3, 4]


def test_new_vanished_and_reshaped_parameters():
    tensors = _run(4)
    tensors[1] = {
        k: v for k, v in tensors[1].items() if k != "conv.bias"
    }  # vanishes, comes back
    tensors[2] = {**tensors[2], "head.weight": torch.randn(10, 64)}  # new
    tensors[3] = {
        **tensors[3],
        "embed.weight": tensors[3]["embed.weight"][:500],
    }  # reshaped
    snaps = [snapshot(i, t) for i, t in enumerate(tensors)]
    for bucket_bytes in (256 * 2**20, 20_000):
        stats = compute_stats(snaps, device="cpu", bucket_bytes=bucket_bytes)
        _check(stats, tensors)
        assert "conv.bias" not in stats[1].params
        assert (
            stats[2].params["conv.bias"].dot_prev is None
        )  # previous snapshot lacked it
        assert stats[3].shapes["embed.weight"] == (500, 48)
        assert stats[3].params["embed.weight"].numel == 500 * 48


def test_optimizer_state_sgd_and_adam():
    g = torch.Generator().manual_seed(7)
    w = {
        "a": torch.randn(300, 40, generator=g),
        "b": torch.randn(40, generator=g),
        "c": torch.randn(5, generator=g),
    }
    sgd = {"a": {"momentum_buffer": torch.randn(300, 40, generator=g)}}
    adam = {
        "b": {
            "exp_avg": torch.randn(40, generator=g),
            "exp_avg_sq": torch.rand(40, generator=g),
            "step": 3.0,
        },
        "c": {
            "exp_avg": torch.randn(6, generator=g)
        },  # wrong shape: ignored, not fatal
    }
    snaps = [snapshot(0, w, {**sgd, **adam})]
    for bucket_bytes in (256 * 2**20, 5_000):
        p = compute_stats(snaps, device="cpu", bucket_bytes=bucket_bytes)[0].params
        x, m = f64(w["a"]), f64(sgd["a"]["momentum_buffer"])
        assert rel(p["a"].buf_dot, (x @ m).item()) < 1e-6
        assert rel(p["a"].buf_norm_sq, (m @ m).item()) < 1e-6
        assert p["a"].exp_avg_sq_sum is None
        x, m, v = f64(w["b"]), f64(adam["b"]["exp_avg"]), f64(adam["b"]["exp_avg_sq"])
        assert rel(p["b"].buf_dot, (x @ m).item()) < 1e-6
        assert rel(p["b"].buf_norm_sq, (m @ m).item()) < 1e-6
        assert rel(p["b"].exp_avg_sq_sum, v.sum().item()) < 1e-6
        assert p["c"].buf_dot is None and p["c"].buf_norm_sq is None


def test_memory_is_bounded_by_the_bucket_and_every_tensor_is_read_once():
    tensors = _run(6)
    for t in (
        tensors
    ):  # one tensor larger than the whole bucket: it must be read in row slices
        t["big.weight"] = torch.randn(400, 256)  # 400 KB
    held = HeldBytes()
    snaps = [snapshot(i, t, make_ref=tracked(held)) for i, t in enumerate(tensors)]
    bucket_bytes = 240_000
    stats = compute_stats(snaps, device="cpu", bucket_bytes=bucket_bytes)
    _check(stats, tensors)
    run_bytes = sum(v.numel() * v.element_size() for t in tensors for v in t.values())
    assert held.peak <= bucket_bytes < run_bytes / 10
    assert (
        held.read == run_bytes
    )  # read once: no tensor is loaded twice for the dot products
    assert all(
        held.loads[f"step{i}/{k}"] == v.numel() * v.element_size()
        for i, t in enumerate(tensors)
        for k, v in t.items()
    )
    assert held.now == 0  # nothing kept after the run


def test_progress_reports_bytes_monotonically_to_the_total():
    tensors = _run(3)
    calls = []
    compute_stats(
        [snapshot(i, t) for i, t in enumerate(tensors)],
        device="cpu",
        bucket_bytes=50_000,
        progress=lambda d, n: calls.append((d, n)),
    )
    total = sum(v.numel() * v.element_size() for t in tensors for v in t.values())
    assert len(calls) > 3
    assert all(n == total for _, n in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert calls[-1][0] == total


def test_reduce_snapshot_pair_equals_compute_stats():
    tensors = _run(3)
    snaps = [snapshot(i, t) for i, t in enumerate(tensors)]
    whole = compute_stats(snaps, device="cpu", bucket_bytes=40_000)
    for t in (1, 2):
        shard = ["conv.weight", "embed.weight"]
        pair = reduce_snapshot_pair(
            snaps[t], snaps[t - 1], names=shard, device="cpu", bucket_bytes=40_000
        )
        assert list(pair) == shard
        for name in shard:
            a, b = pair[name], whole[t].params[name]
            assert a == b  # same pieces, same arithmetic: identical numbers
    first = reduce_snapshot_pair(snaps[0], device="cpu")
    assert first["conv.weight"].dot_prev is None


def test_empty_run_and_empty_snapshot():
    assert compute_stats([], device="cpu") == []
    stats = compute_stats([snapshot(0, {})], device="cpu")
    assert stats[0].params == {}


class _FailingRef(MemoryRef):
    def load(self) -> torch.Tensor:
        raise RuntimeError(
            "PytorchStreamReader failed reading zip archive:\nfailed finding central directory"
        )


class _LyingRef(MemoryRef):
    @property
    def shape(self) -> tuple[int, ...]:
        return (7, 7)


def _one(ref) -> list[Snapshot]:
    return [
        Snapshot(SnapshotMeta("ckpt/step1.pt", 1, None, "embedded"), {ref.name: ref})
    ]


def test_unreadable_tensor_is_one_line_bad_input():
    with pytest.raises(BadInputError) as err:
        compute_stats(_one(_FailingRef("layer.weight", torch.ones(3))), device="cpu")
    message = str(err.value)
    assert "\n" not in message
    assert (
        "'layer.weight'" in message
        and "ckpt/step1.pt" in message
        and "central directory" in message
    )


def test_tensor_not_matching_its_header_is_bad_input():
    with pytest.raises(
        BadInputError, match=r"shape \(3,\) but its header says \(7, 7\)"
    ):
        compute_stats(_one(_LyingRef("w", torch.ones(3))), device="cpu")


def test_non_float_tensor_and_unknown_dtype_are_bad_input():
    with pytest.raises(BadInputError, match="unsupported tensor dtype 'int64'"):
        compute_stats(_one(MemoryRef("steps", torch.arange(3))), device="cpu")


def test_invalid_bucket_size_is_bad_input():
    with pytest.raises(BadInputError, match="bucket size"):
        compute_stats([snapshot(0, {"w": torch.ones(3)})], device="cpu", bucket_bytes=0)


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the error raised without CUDA"
)
def test_cuda_requested_without_cuda_is_bad_input():
    with pytest.raises(
        BadInputError, match="--device cuda requested but CUDA is not available"
    ):
        compute_stats([snapshot(0, {"w": torch.ones(3)})], device="cuda")


def test_unknown_device_is_bad_input_and_auto_works():
    with pytest.raises(BadInputError, match="invalid device 'tpu'"):
        compute_stats([snapshot(0, {"w": torch.ones(3)})], device="tpu")
    stats = compute_stats([snapshot(0, {"w": torch.full((3,), 2.0)})], device="auto")
    assert stats[0].params["w"].norm_sq == 12.0


def test_a_torch_device_is_taken_as_its_name():
    stats = compute_stats([snapshot(0, {"w": torch.full((3,), 2.0)})], device=torch.device("cpu"))
    assert stats[0].params["w"].norm_sq == 12.0
    with pytest.raises(BadInputError, match="invalid device 'meta'"):
        compute_stats([snapshot(0, {"w": torch.ones(3)})], device=torch.device("meta"))


def test_torch_thread_setting_is_restored():
    torch.set_num_threads(2)
    compute_stats([snapshot(0, {"w": torch.ones(10)})], device="cpu")
    assert torch.get_num_threads() == 2


def test_param_table_gives_the_dataclass_stats_and_columns():
    # the engine's stats are columns; each ParamStats made from them must equal the dataclass's
    import dataclasses
    import pickle

    from normscope.snapshot import ParamStats, ParamTable, param_column

    rows = {"a": (12, 3.5, 1, 2.0, 0.25, -1.0, 4.0, 0.5), "b": (3, 1.0, 0, None, None, None, None, None)}
    fields = ("numel", "norm_sq", "nonfinite", "dot_prev", "diff_sq", "buf_dot", "buf_norm_sq",
              "exp_avg_sq_sum")  # fmt: skip
    table = ParamTable(list(rows), dict(zip(fields, zip(*rows.values()))))
    expected = {name: ParamStats(*row) for name, row in rows.items()}
    assert table == expected and dict(table) == expected
    assert list(table) == ["a", "b"] and len(table) == 2 and "a" in table and "c" not in table
    fast = table["a"]
    assert vars(fast).keys() == {f.name for f in dataclasses.fields(ParamStats)}
    assert hash(fast) == hash(expected["a"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.norm_sq = 0.0  # type: ignore[misc]
    assert param_column(table, "dot_prev") == [2.0, None]
    assert param_column(table, "grad_norm_sq") == [None, None]  # not in the table: its default
    assert param_column(expected, "numel") == [12, 3]  # any mapping of ParamStats
    assert pickle.loads(pickle.dumps(table)) == expected
    with pytest.raises(KeyError):
        table["c"]
    with pytest.raises(ValueError):
        ParamTable(["a"], {"numel": [1]})  # no norm_sq
