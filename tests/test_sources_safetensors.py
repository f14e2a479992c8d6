"""safetensors: single files, sharded indexes, directories; lazy refs and row-range reads."""

from __future__ import annotations

import json

import pytest
import torch
from _sources_helpers import small_mlp
from safetensors.torch import save_file

from normscope.engine import compute_stats
from normscope.snapshot import ORDER_EMBEDDED, ORDER_FILENAME
from normscope.sources import open_run
from normscope.sources._refs import MappedTensorRef


def _save_sharded(directory, tensors, n_shards=2, prefix="model"):  # type: ignore[no-untyped-def]
    keys = list(tensors)
    weight_map = {}
    for i in range(n_shards):
        shard = f"{prefix}-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {k: tensors[k].contiguous() for k in keys[i::n_shards]}
        save_file(part, directory / shard)
        weight_map |= dict.fromkeys(part, shard)
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / f"{prefix}.safetensors.index.json").write_text(json.dumps(index))


def test_single_file_is_lazy_and_exact(tmp_path):
    tensors = {"emb.weight": torch.randn(10, 4), "ln.weight": torch.ones(4, dtype=torch.bfloat16),
               "ids": torch.arange(5)}  # fmt: skip
    save_file(tensors, tmp_path / "model.safetensors")
    run = open_run(tmp_path / "model.safetensors")
    assert run.layout == "safetensors"
    (snap,) = run.snapshots
    assert set(snap.tensors) == {"emb.weight", "ln.weight"}  # integer tensor skipped
    ref = snap.tensors["emb.weight"]
    assert isinstance(ref, MappedTensorRef)  # read in place by the kernel, at its address
    assert (ref.shape, ref.dtype, ref.numel, ref.nbytes) == (
        (10, 4),
        "float32",
        40,
        160,
    )
    assert (
        snap.tensors["ln.weight"].dtype == "bfloat16"
        and snap.tensors["ln.weight"].nbytes == 8
    )
    assert torch.equal(ref.load(), tensors["emb.weight"])
    assert torch.equal(ref.load_rows(3, 7), tensors["emb.weight"][3:7])


def test_sharded_index_is_one_snapshot(tmp_path):
    model = small_mlp()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    _save_sharded(tmp_path, sd)
    run = open_run(tmp_path)
    (snap,) = run.snapshots
    assert set(snap.tensors) == set(sd)
    assert snap.meta.extra["shards"] == 2
    for name, ref in snap.tensors.items():
        assert torch.equal(ref.load(), sd[name])
    assert (
        open_run(tmp_path / "model.safetensors.index.json").snapshots[0].tensors.keys()
        == snap.tensors.keys()
    )


def test_directory_of_files_ordered_by_metadata_step(tmp_path):
    model = small_mlp()
    for name, step in (
        ("final.safetensors", 30),
        ("warm.safetensors", 10),
        ("mid.safetensors", 20),
    ):
        save_file(
            model.state_dict(),
            tmp_path / name,
            metadata={"step": str(step), "epoch": "1.5"},
        )
    run = open_run(tmp_path)
    assert run.ordering == ORDER_EMBEDDED
    assert [s.meta.step for s in run.snapshots] == [10, 20, 30]
    assert run.snapshots[0].meta.epoch == 1.5


def test_directory_of_files_ordered_by_name(tmp_path):
    model = small_mlp()
    for step in (200, 1000, 30):
        save_file(model.state_dict(), tmp_path / f"global_step{step}.safetensors")
    run = open_run(tmp_path)
    assert run.ordering == ORDER_FILENAME
    assert [s.meta.step for s in run.snapshots] == [30, 200, 1000]


def test_prefixes_cleaned(tmp_path):
    model = small_mlp()
    save_file(
        {"module." + k: v for k, v in model.state_dict().items()},
        tmp_path / "m.safetensors",
    )
    (snap,) = open_run(tmp_path / "m.safetensors").snapshots
    assert set(snap.tensors) == set(model.state_dict())


def test_other_files_beside_safetensors_are_reported(tmp_path):
    save_file(small_mlp().state_dict(), tmp_path / "a.safetensors")
    torch.save(small_mlp().state_dict(), tmp_path / "b.pt")
    run = open_run(tmp_path)
    assert len(run.snapshots) == 1
    assert any("not safetensors: b.pt" in w for w in run.warnings)


def _fp8(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state in float8: tensors the kernel does not read in place (the pool's)."""
    return {k: v.to(torch.float8_e4m3fn) for k, v in model.state_dict().items()}


def test_refs_of_a_run_share_a_bounded_set_of_open_files(tmp_path):
    state = _fp8(small_mlp())
    for step in range(12):
        save_file(state, tmp_path / f"step_{step}.safetensors")
    run = open_run(tmp_path)
    refs = [ref for snap in run.snapshots for ref in snap.tensors.values()]
    handles = {id(ref.handles) for ref in refs}
    assert len(handles) == 1  # one cache for the whole run, not one open per tensor
    for ref in refs:
        assert torch.equal(ref.load().view(torch.uint8), state[ref.name].view(torch.uint8))
    assert len(refs[0].handles._open) <= refs[0].handles.keep


def test_tensors_read_in_place_share_one_mapping_per_file(tmp_path):
    model = small_mlp()
    for step in range(3):
        save_file(model.state_dict(), tmp_path / f"step_{step}.safetensors")
    run = open_run(tmp_path)
    for snap in run.snapshots:
        assert len({id(ref.archive) for ref in snap.tensors.values()}) == 1
        for ref in snap.tensors.values():
            assert torch.equal(ref.load(), model.state_dict()[ref.name])


def test_a_bucket_walk_over_many_snapshots_keeps_each_file_open(tmp_path):
    # The engine reads each bucket from every snapshot in turn: a pool smaller than the run
    # would reopen (and re-parse) every file once per bucket.
    state = _fp8(small_mlp())
    for step in range(12):
        save_file(state, tmp_path / f"step_{step}.safetensors")
    run = open_run(tmp_path)
    handles = next(iter(run.snapshots[0].tensors.values())).handles
    stats = compute_stats(run.snapshots, device="cpu", bucket_bytes=3 * 64)
    assert len(stats) == 12
    mapped = dict(handles._mapped)
    assert len(mapped) == 12 and all(m is not None for m in mapped.values())
    compute_stats(run.snapshots, device="cpu", bucket_bytes=3 * 64)
    assert all(handles._mapped[p] is m for p, m in mapped.items())  # none remapped
    assert not handles._open  # every tensor was a view of the mapping: safe_open never needed


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_mapped_views_equal_safe_open_reads_bit_for_bit(tmp_path, dtype):
    from safetensors import safe_open

    g = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(7, 5, generator=g).to(dtype), "b": torch.randn(3, generator=g).to(dtype),
               "c": torch.tensor(2.5).to(dtype)}
    save_file(tensors, tmp_path / "m.safetensors")
    run = open_run(tmp_path / "m.safetensors")
    refs = run.snapshots[0].tensors
    with safe_open(tmp_path / "m.safetensors", framework="pt") as f:
        for key in tensors:
            want = f.get_tensor(key)
            got = refs[key].load()
            assert got.dtype == want.dtype and got.shape == want.shape
            assert torch.equal(got.view(-1).view(torch.uint8), want.view(-1).view(torch.uint8))
    assert torch.equal(refs["a"].load_rows(2, 5), tensors["a"][2:5])
    assert torch.equal(refs["a"].load_rows(6, 10), tensors["a"][6:7])


def test_a_write_to_a_mapped_view_never_reaches_the_file(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(1000)}, path)
    before = path.read_bytes()
    tensor = open_run(path).snapshots[0].tensors["w"].load()
    tensor.add_(1.0)  # private mapping: the page is copied, the file untouched
    assert path.read_bytes() == before
    assert float(open_run(path).snapshots[0].tensors["w"].load().sum()) == 1000.0


def test_data_not_aligned_to_its_dtype_is_read_into_aligned_memory(tmp_path):
    # A hand-written file whose float32 tensor starts at an odd byte: no typed view is possible,
    # so its bytes are read with read calls (not by safe_open, which reads its own mapping).
    import json
    import struct

    values = torch.arange(4, dtype=torch.float32)
    header = json.dumps({"pad": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                         "w": {"dtype": "F32", "shape": [4], "data_offsets": [1, 17]}}).encode()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x07" + values.numpy().tobytes())
    ref = open_run(path).snapshots[0].tensors["w"]
    assert ref.offset is not None and ref.offset % 4 != 0
    assert torch.equal(ref.load(), values)
    assert torch.equal(ref.load_rows(1, 3), values[1:3])
