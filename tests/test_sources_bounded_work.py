"""Sizes a file declares are checked against the bytes it holds, in exact arithmetic, before
anything is allocated or read: a small crafted file is refused in one line, never a hang."""

from __future__ import annotations

import json
import pickle
import struct
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from _hostile import (
    Forged,
    assert_api_refused,
    assert_refused,
    huge_zip64_sizes,
    run_api,
    run_cli,
    save_forged,
)
from _sources_helpers import load_all, small_cnn, small_mlp

from normscope.errors import BadInputError
from normscope.sources import open_run

SAMPLE_RUN = Path(__file__).resolve().parents[1] / "sample_runs" / "digits_bn_cnn_sgd"


def _safetensors(path, header, data=b""):  # type: ignore[no-untyped-def]
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize(
    ("header", "data", "match"),
    [
        # 2**62 + 1 elements of 4 bytes: 2**64 + 4 bytes, 4 once wrapped to 64 bits
        ({"w": {"dtype": "F32", "shape": [(1 << 62) + 1], "data_offsets": [0, 4]}}, 4,
         "18446744073709551620 bytes, but 4"),
        ({"w": {"dtype": "F32", "shape": [1 << 32, 1 << 32], "data_offsets": [0, 0]}}, 0,
         "but 0 bytes"),
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
          "v": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, 16, "overlap"),
        ({"__metadata__": {"step": 10**400}, "w": {"dtype": "F32", "shape": [1],
                                                   "data_offsets": [0, 4]}}, 4, None),
    ],
    ids=["shape-wraps-into-range", "shape-of-2**64", "entries-overlap", "step-past-float"],
)
def test_safetensors_headers_that_declare_more_than_the_file_holds(tmp_path, header, data, match):
    path = _safetensors(tmp_path / "model.safetensors", header, b"\0" * data)
    if match is None:  # not a size at all: read, the step ignored
        assert open_run(path).snapshots[0].meta.step is None
        return
    with pytest.raises(BadInputError, match=match) as info:
        open_run(path)
    assert "\n" not in str(info.value)


def test_a_deeply_nested_safetensors_header_is_one_line(tmp_path):
    nested = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(nested)) + nested)
    with pytest.raises(BadInputError, match="corrupt safetensors header"):
        open_run(tmp_path / "model.safetensors")


def test_an_expanded_tensor_declaring_far_more_than_its_bytes_is_refused(tmp_path):
    # torch.save keeps an expand()'s stride of 0: 2**40 elements over one stored float
    for epoch in range(2):
        state = small_cnn().state_dict()
        state["0.weight"] = Forged(torch.ones(1), size=(1 << 20, 1 << 20), stride=(0, 0))
        save_forged({"state_dict": state, "epoch": epoch}, tmp_path / f"epoch_{epoch}.pt")
    [result] = run_api(tmp_path, timeout=120)  # unbounded, this took hours
    assert "expanded (stride-0) tensor" in assert_api_refused(result)


def test_a_small_expanded_buffer_is_still_read(tmp_path):
    state = small_cnn().state_dict()
    state["1.running_var"] = torch.ones(1).expand(4)  # a stride-0 buffer, 16 logical bytes
    torch.save(state, tmp_path / "w.pt")
    snap = open_run(tmp_path / "w.pt").snapshots[0]
    assert torch.equal(snap.tensors["1.running_var"].load(), torch.ones(4))


@pytest.mark.parametrize("member", [b"data/0", b"data.pkl", b"version"])
@pytest.mark.parametrize("value", [(1 << 64) - 1, (1 << 63) + 5], ids=["2**64-1", "2**63+5"])
def test_zip64_sizes_past_any_file_are_one_line_or_read_as_torch_reads_them(tmp_path, member,
                                                                            value):  # fmt: skip
    torch.save(small_mlp().state_dict(), tmp_path / "good.pt")
    (tmp_path / "w.pt").write_bytes(huge_zip64_sizes((tmp_path / "good.pt").read_bytes(), member,
                                                     value))  # fmt: skip
    (tmp_path / "good.pt").unlink()
    try:
        load_all(open_run(tmp_path / "w.pt"))
    except BadInputError as exc:
        assert "\n" not in str(exc)
    else:  # read only because torch.load reads it, as normscope calls it
        assert torch.load(tmp_path / "w.pt", weights_only=True, mmap=True)


def _dcp_save(directory):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({"model": small_mlp().state_dict()}, checkpoint_id=str(directory))
    return dcp.FileSystemReader(str(directory)).read_metadata()


def _damaged_metadata(metadata, damage):  # type: ignore[no-untyped-def]
    import dataclasses
    import pathlib

    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

    if damage == "a-dict":
        return {"state_dict_metadata": {}, "storage_data": {}}
    if damage == "a-path":
        return pathlib.PurePosixPath("/etc/passwd")
    if damage == "int-file-name":
        metadata.storage_data = {k: dataclasses.replace(v, relative_path=7)
                                 for k, v in metadata.storage_data.items()}  # fmt: skip
    elif damage in ("offset-past-any-file", "missing-file"):
        changed = {"offset": 1 << 63} if damage == "offset-past-any-file" else {
            "relative_path": "missing.distcp"}
        metadata.storage_data = {k: dataclasses.replace(v, **changed)
                                 for k, v in metadata.storage_data.items()}  # fmt: skip
    elif damage == "unhashable-planner-path":
        metadata.planner_data = {k: [["model"], k] for k in metadata.state_dict_metadata}
    elif damage == "entry-without-chunks":  # found by benchmarks/fuzz.py
        del metadata.state_dict_metadata["model.0.weight"].chunks
    elif damage == "entry-without-size":  # found by benchmarks/fuzz.py
        del metadata.state_dict_metadata["model.0.weight"].size
    elif damage == "metadata-without-tables":  # found by benchmarks/fuzz.py
        del metadata.state_dict_metadata
    elif damage in ("chunk-past-size", "chunk-size-doubled", "huge-size"):
        name = "model.0.weight"
        meta = metadata.state_dict_metadata[name]
        rows, cols = meta.size
        if damage == "chunk-past-size":  # one chunk of the right size, one row down
            meta.chunks = [ChunkStorageMetadata(torch.Size([1, 0]), torch.Size([rows, cols]))]
        elif damage == "chunk-size-doubled":
            meta.size = torch.Size([rows * 2, cols])
        else:
            meta.size = torch.Size([1 << 40, cols])
            meta.chunks = [ChunkStorageMetadata(torch.Size([0, 0]), torch.Size([1 << 40, cols]))]
    return metadata


@pytest.mark.parametrize("damage", ["a-dict", "a-path", "int-file-name", "unhashable-planner-path",
                                    "entry-without-chunks", "entry-without-size", "metadata-without-tables", "chunk-past-size", "chunk-size-doubled",
                                    "offset-past-any-file", "missing-file"])  # fmt: skip
def test_dcp_metadata_that_torch_does_not_write_is_refused(tmp_path, damage):
    metadata = _dcp_save(tmp_path / "ckpt")
    # our own, trusted file, rewritten as a crafted one would be
    (tmp_path / "ckpt" / ".metadata").write_bytes(pickle.dumps(_damaged_metadata(metadata, damage)))
    with pytest.raises(BadInputError, match="ckpt") as info:
        load_all(open_run(tmp_path / "ckpt"))
    assert "\n" not in str(info.value)


def test_dcp_metadata_naming_a_damaged_global_is_refused_in_one_printable_line(tmp_path):
    # found by benchmarks/fuzz.py: a flipped byte inside `torch.int64` put a CR in the message
    _dcp_save(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / ".metadata"
    data = path.read_bytes()
    assert b"float32" in data
    path.write_bytes(data.replace(b"float32", b"floa\r32", 1))
    with pytest.raises(BadInputError, match="ckpt") as info:
        load_all(open_run(tmp_path / "ckpt"))
    assert str(info.value).isprintable()


def test_a_dcp_item_in_an_odd_pickle_protocol_is_read_without_torchs_warning(tmp_path):
    # found by benchmarks/fuzz.py: torch.load's UserWarning about the protocol reached stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        # the fuzzer's base: a sample run's checkpoint, whose pickled items torch.load reads
        state = torch.load(SAMPLE_RUN / "epoch_001.pt", weights_only=True)
        dcp.save({"model": state["model"], "optimizer": state["optimizer"], "step": 23},
                 checkpoint_id=str(tmp_path / "ckpt"))
    [shard] = (tmp_path / "ckpt").glob("*.distcp")
    data = shard.read_bytes()
    # every item's pickle (after torch.save's Z padding) says protocol 66
    assert data.count(b"Z\x80\x02c") > 1
    shard.write_bytes(data.replace(b"Z\x80\x02c", b"Z\x80\x42c"))
    outcome = run_cli("analyze", str(tmp_path / "ckpt"), "--device", "cpu", "-f", "json")
    assert outcome.returncode == 0, outcome.stderr  # the protocol number alone changes nothing
    assert "Warning" not in outcome.stderr, outcome.stderr


def test_a_dcp_item_the_weights_only_reader_refuses_is_one_line_without_torchs_advice(tmp_path):
    _dcp_save(tmp_path / "ckpt")
    [shard] = (tmp_path / "ckpt").glob("*.distcp")
    data = shard.read_bytes()
    # a tensor's rebuild function renamed: the weights-only reader refuses the item
    assert b"_rebuild_tensor_v2" in data
    shard.write_bytes(data.replace(b"_rebuild_tensor_v2", b"_rebuild_tensor_v9", 1))
    line = assert_refused(run_cli("analyze", str(tmp_path / "ckpt"), "--device", "cpu"))
    assert "ckpt" in line
    assert "weights_only" not in line  # torch's advice to turn the safe reader off is not ours


def test_dcp_metadata_declaring_a_huge_tensor_is_refused(tmp_path):
    metadata = _dcp_save(tmp_path / "ckpt")
    (tmp_path / "ckpt" / ".metadata").write_bytes(pickle.dumps(_damaged_metadata(metadata,
                                                                                 "huge-size")))  # fmt: skip
    [result] = run_api(tmp_path / "ckpt", timeout=120)  # a child: unbounded, this allocates 2**40 rows
    assert "ckpt" in assert_api_refused(result)


class _NotAllowed:
    """A global weights_only refuses: the file then needs `--recover-unsafe`."""


def test_recover_unsafe_walks_a_shared_object_graph_once(tmp_path):
    shared: list = [torch.zeros(1)]
    for _ in range(64):  # each level holds the one below twice: 2**64 paths, 65 lists
        shared = [shared, shared]
    for epoch in range(2):
        torch.save({"state_dict": small_cnn(epoch).state_dict(), "epoch": epoch,
                    "extra": _NotAllowed(), "graph": shared}, tmp_path / f"epoch_{epoch}.pt")  # fmt: skip
    outcome = run_cli("analyze", "--recover-unsafe", str(tmp_path), timeout=120)
    assert outcome.returncode == 0, outcome.stderr[-2000:]


def test_a_sharded_bin_checkpoint_counts_its_shards_bytes(tmp_path):
    # the index file is tiny; the 4 MB the tensors declare are in the shards it names
    root = tmp_path / "checkpoint-10"
    root.mkdir()
    weight_map = {}
    for i, name in enumerate(("a.weight", "b.weight")):
        shard = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({name: torch.randn(512, 1024)}, root / shard)
        weight_map[name] = shard
    (root / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (root / "trainer_state.json").write_text(json.dumps({"global_step": 10}))
    run = open_run(tmp_path)
    assert run.layout == "hf-trainer" and set(run.snapshots[0].tensors) == set(weight_map)
