"""The in-place path (refs with an address, as arrays from reader to accumulator) gives exactly
the general path's stats, and takes the runs it is for."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from normscope.engine import compute_stats, reduce_snapshot_pair
from normscope.engine import driver as engine_driver
from normscope.engine import fused, in_place
from normscope.engine.fused import fused_kernel
from normscope.snapshot import ParamTable
from normscope.sources import open_run, safetensors_files
from normscope.sources._refs import MappedTensorRef, SafetensorsHandles

pytestmark = pytest.mark.skipif(fused_kernel() is None, reason="needs the fused kernel")


def _save_run(root: Path, shapes: list[dict[str, tuple[int, ...]]], seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for epoch, snapshot in enumerate(shapes):
        state = {name: torch.randn(shape, generator=g) for name, shape in snapshot.items()}
        if epoch == 2 and "a.weight" in state:
            state["a.weight"][0, 0] = float("nan")  # counted through the ref
        state["half.weight"] = torch.randn(40, generator=g).half()
        torch.save({"model": state, "epoch": epoch}, root / f"epoch_{epoch}.pt")


def _both(path: Path, monkeypatch: pytest.MonkeyPatch, **kwargs) -> tuple[list, list, int]:
    """(in-place stats, general stats, (bucket, snapshot) items that took the in-place path).
    The in-place stats are also checked to be the same bits item by item as in chains of
    snapshots (`driver._start_chain`)."""
    run = open_run(path)
    taken = []
    start, chained = engine_driver._start_in_place, engine_driver._start_chain

    def counting(*args):  # type: ignore[no-untyped-def]
        started = start(*args)
        taken.append(started is not None)
        return started

    def counting_chain(chain, *args):  # type: ignore[no-untyped-def]
        taken.extend([True] * len(chain))
        return chained(chain, *args)

    monkeypatch.setattr(engine_driver, "_start_in_place", counting)
    monkeypatch.setattr(engine_driver, "_start_chain", counting_chain)
    fast = compute_stats(run.snapshots, device="cpu", **kwargs)
    monkeypatch.setattr(engine_driver, "CHAIN_SNAPSHOTS", 1)  # item by item
    _same(compute_stats(run.snapshots, device="cpu", **kwargs), fast)
    monkeypatch.setattr(engine_driver, "_start_in_place", lambda *args: None)
    general = compute_stats(run.snapshots, device="cpu", **kwargs)
    return fast, general, sum(taken)


def _same(fast: list, general: list) -> None:
    assert len(fast) == len(general)
    for a, b in zip(fast, general):
        assert list(a.params) == list(b.params) and a.shapes == b.shapes and a.dtypes == b.dtypes
        for name in b.params:
            x, y = a.params[name], b.params[name]
            assert x.nonfinite == y.nonfinite and x.numel == y.numel
            for field in ("norm_sq", "dot_prev", "diff_sq"):
                u, v = getattr(x, field), getattr(y, field)
                assert (u is None) == (v is None)
                assert u is None or u == v or (math.isnan(u) and math.isnan(v)), (name, field)


def test_a_run_of_one_model_goes_in_place_bucket_by_bucket(tmp_path, monkeypatch):
    model = {f"l{i}.weight": (16, 8, 3, 3) for i in range(30)} | {"a.weight": (4, 4)}
    _save_run(tmp_path, [model] * 4)
    # small buckets: several per snapshot, each with the previous snapshot's as its prev stream
    fast, general, taken = _both(tmp_path, monkeypatch, bucket_bytes=64 << 10)
    assert taken >= 8 and all(isinstance(s.params, ParamTable) for s in fast)
    _same(fast, general)
    assert fast[0].params["l0.weight"].dot_prev is None  # the first snapshot has none
    assert fast[1].params["l0.weight"].dot_prev is not None
    assert fast[2].params["a.weight"].nonfinite == 1 and math.isnan(fast[2].params["a.weight"].norm_sq)


def test_snapshots_that_change_take_the_general_path_where_they_must(tmp_path, monkeypatch):
    base = {f"l{i}.weight": (16, 8) for i in range(6)}
    grown = base | {"l0.weight": (32, 8)}  # one parameter changes shape
    fewer = {k: v for k, v in base.items() if k != "l3.weight"}  # one vanishes
    _save_run(tmp_path, [base, base, grown, fewer, fewer])
    fast, general, taken = _both(tmp_path, monkeypatch, bucket_bytes=2 << 10)
    assert taken  # the snapshots that did not change
    _same(fast, general)
    assert fast[2].params["l0.weight"].dot_prev is None  # reshaped: no previous counterpart
    # each snapshot's names, shapes and sizes are its own file's, though snapshots of one model
    # share what the plan and the accumulator found for the first of them
    for stats, model in zip(fast, [base, base, grown, fewer, fewer]):
        expected = model | {"half.weight": (40,)}
        assert stats.shapes == expected and list(stats.params) == list(expected)
        assert [p.numel for p in stats.params.values()] == [math.prod(s) for s in expected.values()]


def test_a_distributed_work_item_reads_in_place_too(tmp_path, monkeypatch):
    # reduce_snapshot_pair reads the previous snapshot only as `prev`: the same numbers as the run
    model = {f"l{i}.weight": (16, 8) for i in range(12)}
    _save_run(tmp_path, [model] * 3)
    snapshots = open_run(tmp_path).snapshots
    whole = compute_stats(snapshots, device="cpu")
    names = [f"l{i}.weight" for i in range(0, 12, 2)]  # a shard
    taken: list = []
    start, chained = engine_driver._start_in_place, engine_driver._start_chain

    def counting(*args):  # type: ignore[no-untyped-def]
        taken.append(start(*args))
        return taken[-1]

    def counting_chain(*args):  # type: ignore[no-untyped-def]
        taken.append(chained(*args))
        return taken[-1]

    monkeypatch.setattr(engine_driver, "_start_in_place", counting)
    monkeypatch.setattr(engine_driver, "_start_chain", counting_chain)
    for chain in (engine_driver.CHAIN_SNAPSHOTS, 1):  # both snapshots in one call, or one by one
        monkeypatch.setattr(engine_driver, "CHAIN_SNAPSHOTS", chain)
        taken.clear()
        pair = reduce_snapshot_pair(snapshots[2], snapshots[1], names=names, device="cpu")
        assert taken and all(t is not None for t in taken) and list(pair) == names
        assert all(pair[n] == whole[2].params[n] for n in names)


def test_without_the_fused_kernel_refs_are_loaded_and_agree(tmp_path, monkeypatch):
    # the torch kernels (and CUDA staging, which loads the same way) build tensors from the refs
    model = {f"l{i}.weight": (16, 8, 3, 3) for i in range(8)} | {"a.weight": (4, 4)}
    _save_run(tmp_path, [model] * 3)
    snapshots = open_run(tmp_path).snapshots
    fused = compute_stats(snapshots, device="cpu")
    monkeypatch.setenv("NORMSCOPE_FUSED", "0")
    assert fused_kernel() is None
    loaded = compute_stats(snapshots, device="cpu")
    for a, b in zip(fused, loaded, strict=True):
        assert list(a.params) == list(b.params)
        for name in a.params:
            x, y = a.params[name], b.params[name]
            assert x.nonfinite == y.nonfinite
            for field in ("norm_sq", "dot_prev", "diff_sq"):
                u, v = getattr(x, field), getattr(y, field)
                assert (u is None) == (v is None)
                if u is not None and math.isfinite(u):
                    assert v == pytest.approx(u, rel=1e-6, abs=1e-9)


def _float64_stats(states: list[dict[str, torch.Tensor]], name: str) -> list[tuple[float, ...]]:
    out, prev = [], None
    for state in states:
        x = state[name].double().reshape(-1)
        y = None if prev is None else prev[name].double().reshape(-1)
        out.append((float(x.dot(x)), None if y is None else float(x.dot(y)),
                    None if y is None else float((y - x).dot(y - x))))  # fmt: skip
        prev = state
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_safetensors_read_in_place_whole_even_past_a_bucket(tmp_path, monkeypatch, dtype):
    # an embedding larger than a bucket's share: read where it lies, one piece, not row slices
    # copied into memory; the numbers are the float64 reference's
    g = torch.Generator().manual_seed(3)
    states = [{"embed.weight": torch.randn(300, 64, generator=g).to(dtype),
               "norm.weight": torch.randn(64, generator=g).to(dtype)} for _ in range(3)]  # fmt: skip
    for step, state in enumerate(states):
        save_file(state, tmp_path / f"step_{step}.safetensors")
    run = open_run(tmp_path)
    assert all(isinstance(r, MappedTensorRef) for s in run.snapshots for r in s.tensors.values())
    planned = []
    plan = engine_driver.plan_buckets

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        planned.append(plan(*args, **kwargs))
        return planned[-1]

    monkeypatch.setattr(engine_driver, "plan_buckets", recording)
    bucket_bytes = 4 * 8192  # 8 KiB per bucket and snapshot: the embedding is 19-38 KiB
    fast, general, taken = _both(tmp_path, monkeypatch, bucket_bytes=bucket_bytes)
    assert taken > 0
    assert all(piece.whole for bucket in planned[0].buckets for piece in bucket)
    for stats in (fast, general):
        for name in ("embed.weight", "norm.weight"):
            want = _float64_stats(states, name)
            got = [(s.params[name].norm_sq, s.params[name].dot_prev, s.params[name].diff_sq)
                   for s in stats]  # fmt: skip
            # bf16 and fp16 are summed in float32 lanes: within 8 * 2^-24, a dot product within
            # that of |x||y| (docs/engine.md); float64's otherwise
            lanes = dtype in (torch.bfloat16, torch.float16)
            rel = 8 * 2.0**-24 if lanes else 1e-12
            for k, (g_row, w_row) in enumerate(zip(got, want)):
                for q, (u, v) in enumerate(zip(g_row, w_row)):
                    assert (u is None) == (v is None)
                    in_lanes = q == 1 and lanes
                    scale = (w_row[0] * want[k - 1][0]) ** 0.5 if in_lanes else abs(v or 0.0)
                    assert u is None or abs(u - v) <= rel * scale, (name, k, q)


def test_torch_kernels_read_a_large_parameter_in_row_slices(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(4)
    for step in range(2):
        save_file({"embed.weight": torch.randn(300, 64, generator=g)},
                  tmp_path / f"step_{step}.safetensors")  # fmt: skip
    monkeypatch.setenv("NORMSCOPE_FUSED", "0")
    planned = []
    plan = engine_driver.plan_buckets
    monkeypatch.setattr(engine_driver, "plan_buckets",
                        lambda *a, **k: planned.append(plan(*a, **k)) or planned[-1])  # fmt: skip
    compute_stats(open_run(tmp_path).snapshots, device="cpu", bucket_bytes=4 * 8192)
    assert not any(piece.whole for bucket in planned[0].buckets for piece in bucket)


def test_a_run_maps_at_most_its_pool_s_share_of_files(tmp_path):
    for step in range(3):
        save_file({"w": torch.randn(8, 8)}, tmp_path / f"step_{step}.safetensors")
    handles = SafetensorsHandles(keep=2)
    kinds = [type(safetensors_files.safetensors_refs({str(tmp_path / f"step_{s}.safetensors"): []},
                                                    handles)[0]["w"]).__name__
             for s in range(3)]  # fmt: skip
    assert kinds == ["SafetensorsMappedRef", "SafetensorsMappedRef", "SafetensorsTensorRef"]


def test_chains_of_snapshots_continue_from_the_previous_chain(tmp_path, monkeypatch):
    # chains of 3: snapshots 0-2, 3-5 (read against 2), 6 (against 5); the same bits as item by
    # item and as the general path, NaN counted in whichever chain holds it
    model = {f"l{i}.weight": (16, 8, 3, 3) for i in range(6)} | {"a.weight": (4, 4)}
    _save_run(tmp_path, [model] * 7)
    monkeypatch.setattr(engine_driver, "CHAIN_SNAPSHOTS", 3)
    fast, general, taken = _both(tmp_path, monkeypatch, bucket_bytes=64 << 10)
    assert taken >= 2 * 7 and taken % 7 == 0  # every (bucket, snapshot) in place, several buckets
    _same(fast, general)
    assert all(s.params["l0.weight"].dot_prev is not None for s in fast[1:])
    assert fast[2].params["a.weight"].nonfinite == 1


def test_refs_longer_than_a_piece_are_cut_as_the_general_path_cuts_them(tmp_path, monkeypatch):
    # a large matrix read in place is cut into pieces for the workers: the same bits as the
    # general path's pieces, in chains and item by item
    monkeypatch.setattr(in_place, "PIECE_ELEMENTS", 1000)
    monkeypatch.setattr(fused, "PIECE_ELEMENTS", 1000)
    model = {"big.weight": (70, 64), "l1.weight": (10, 10)}
    _save_run(tmp_path, [model] * 4)
    fast, general, taken = _both(tmp_path, monkeypatch)
    assert taken >= 4  # every snapshot's bucket read in place (counted in chains and one by one)
    _same(fast, general)
    assert fast[2].params["big.weight"].dot_prev is not None


def test_what_a_bucket_s_snapshots_share_is_found_once_and_only_for_those_that_share_it(
    tmp_path, monkeypatch
):
    """The reader keeps a bucket's names, shapes and kernel layout for the snapshots the plan
    gave the same mapping; each snapshot's columns are those found for it alone, cut refs too."""
    from normscope.engine.loading import WorkItem, _in_place_bucket, load_work
    from normscope.engine.plan import plan_buckets

    monkeypatch.setattr(in_place, "PIECE_ELEMENTS", 1000)
    base = {"big.weight": (70, 64), "l1.weight": (10, 10)}
    _save_run(tmp_path, [base, base, base | {"l1.weight": (12, 10)}, base])
    snapshots = open_run(tmp_path).snapshots
    plan = plan_buckets(snapshots, 1 << 20, read_in_place=lambda name: True)
    assert plan.entries[1] is plan.entries[0] and plan.entries[2] is not plan.entries[1]
    known: dict = {}
    for t in range(len(snapshots)):
        item = WorkItem.from_plan(plan, snapshots, bucket=0, snapshot=t)
        cached = load_work(item, in_place=True, known=known)
        alone = load_work(item, in_place=True)
        assert cached.columns is not None and alone.columns is not None
        for field in ("addresses", "codes", "numels", "owner"):
            assert (getattr(cached.columns, field) == getattr(alone.columns, field)).all(), (t, field)
        assert cached.shapes == alone.shapes == [tuple(snapshots[t].tensors[n].shape)
                                                 for n in snapshots[t].tensors]  # fmt: skip
        assert known[0].entries is item.entries  # found again for the changed snapshot and after
    assert _in_place_bucket(item).layout.entries == 3  # big.weight, l1.weight, half.weight
