"""The fast torch.save reader: the same objects as torch.load, and torch.load for anything else."""

from __future__ import annotations

import argparse
import ctypes
import datetime
import hashlib
import logging
import math
import mmap
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from _sources_helpers import adamw, sgd, small_cnn, small_mlp, train
from test_sources_bad_input import Exploit
from test_sources_restricted import RunsOpen, RunsShell

from normscope.errors import BadInputError, UnsafeCheckpointError
from normscope.sources import _torchio, _zipdir
from normscope.sources._fast_torch_zip import load_torch_zip_fast, scan_torch_zip
from normscope.sources._refs import MappedTensorRef
from normscope.sources._torchio import ZIP_MAGIC, load_torch_file, read_head
from normscope.sources._unpickle import Declined, Reason

# every test here, with the reader's C loops and with its Python ones
pytestmark = pytest.mark.usefixtures("each_reader_loops")

SAMPLE_RUNS = Path(__file__).resolve().parent.parent / "sample_runs"


def _torch_load(path: Path) -> Any:
    return torch.load(path, weights_only=True, mmap=True, map_location="cpu")


def assert_same(
    fast: Any, slow: Any, storages: dict[tuple[str, int], int] | None = None
) -> None:
    """Equal types, values and tensor layouts, and storages shared exactly where torch shares."""
    storages = {} if storages is None else storages
    assert type(fast) is type(slow)
    if isinstance(fast, torch.Tensor):
        assert (fast.dtype, fast.shape, fast.stride(), fast.storage_offset()) == (
            slow.dtype, slow.shape, slow.stride(), slow.storage_offset())  # fmt: skip
        assert fast.requires_grad == slow.requires_grad and fast._base is slow._base is None
        assert fast._backward_hooks == slow._backward_hooks
        fs, ss = fast.untyped_storage(), slow.untyped_storage()
        # bitwise (NaNs included), over the whole storage
        assert torch.equal(torch.empty(0, dtype=torch.uint8).set_(fs),
                           torch.empty(0, dtype=torch.uint8).set_(ss))  # fmt: skip
        if ss.nbytes():  # each storage of torch's (not only its memory) is one of ours
            mine, theirs = fs._cdata, ss._cdata
            assert storages.setdefault(("torch", theirs), mine) == mine
            assert storages.setdefault(("ours", mine), theirs) == theirs  # and never two
    elif isinstance(fast, dict):
        assert list(fast) == list(slow)
        for key in fast:
            assert_same(fast[key], slow[key], storages)
        if hasattr(slow, "__dict__"):  # a state_dict's `_metadata`
            assert_same(vars(fast), vars(slow), storages)
    elif isinstance(fast, (list, tuple)):
        assert len(fast) == len(slow)
        for a, b in zip(fast, slow):
            assert_same(a, b, storages)
    elif isinstance(fast, float) and math.isnan(fast):
        assert math.isnan(slow)
    else:
        assert fast == slow


def _checkpoint() -> dict[str, Any]:
    """A training checkpoint with every kind of value torch.save writes for one."""
    cnn, mlp = small_cnn(), small_mlp()
    cnn_opt, mlp_opt = sgd(cnn), adamw(mlp)
    train(cnn, cnn_opt, 3)
    train(mlp, mlp_opt, 2)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return {
        "model": cnn.state_dict(),  # an OrderedDict with `_metadata`, int64 num_batches_tracked
        "optimizer": cnn_opt.state_dict(),  # SGD momentum buffers
        "ema": {"model": mlp.state_dict(), "optimizer": mlp_opt.state_dict()},  # AdamW, 0-d steps
        "tensors": {
            "bf16": torch.randn(5, 3).to(torch.bfloat16),
            "fp16": torch.randn(7).half(),
            "int64": torch.arange(10),
            "bool": torch.tensor([True, False]),
            "scalar": torch.tensor(2.5),
            "transposed": torch.randn(3, 5).t(),
            "row": base[1],  # two views of one storage
            "cols": base[:, 2:4],
            "empty": torch.empty(0, 3),
            "nan": torch.tensor([float("nan"), float("inf")]),
            "grad": torch.ones(2, requires_grad=True),
            "float8": torch.ones(4).to(torch.float8_e4m3fn),  # rebuilt by _rebuild_tensor_v3
        },
        "epoch": 3,
        "step": 100,
        "lr": 0.1,
        "name": "run α",
        "losses": [0.5, 0.25, None],
        "pair": (1, "x"),
        "done": False,
        "tags": {"a", "b"},
        "blob": b"\x00\xff",
        "milestones": Counter({30: 1, 60: 1}),
        "ordered": OrderedDict(b=1, a=2),
        "size": torch.Size([2, 3]),
        "device": torch.device("cuda", 1),
        "dtype": torch.bfloat16,
        "layout": torch.strided,
    }


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("fast") / "ckpt.pt"
    torch.save(_checkpoint(), path)
    return path


def test_a_training_checkpoint_reads_as_torch_load_reads_it(checkpoint_file):
    fast = load_torch_zip_fast(str(checkpoint_file))
    assert_same(fast, _torch_load(checkpoint_file))
    row, cols = fast["tensors"]["row"], fast["tensors"]["cols"]
    assert row.untyped_storage().data_ptr() == cols.untyped_storage().data_ptr()
    row.fill_(-1.0)  # one memory: the write shows through the other view
    assert (cols[1] == -1.0).all()


def test_load_torch_file_takes_the_fast_path(checkpoint_file, monkeypatch):
    expected = _torch_load(checkpoint_file)

    def not_called(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", not_called)
    assert_same(load_torch_file(str(checkpoint_file)), expected)


def _mappings_of(path: Path) -> list[tuple[int, int, int]]:
    """(start, stop, resident bytes) of each mapping of `path` in this process."""
    found: list[tuple[int, int, int]] = []
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                named = len(fields) >= 6 and os.path.exists(fields[-1])
                if named and os.path.samefile(fields[-1], path):
                    start, stop = (int(x, 16) for x in fields[0].split("-"))
                    found.append((start, stop, 0))
                else:
                    found.append((0, 0, -1))  # not ours: its Rss is skipped
            elif fields[0] == "Rss:" and found and found[-1][2] == 0:
                found[-1] = (found[-1][0], found[-1][1], int(fields[1]) * 1024)
    return [m for m in found if m[2] >= 0]


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc")
def test_opening_maps_the_file_and_reads_no_tensor_data(tmp_path):
    path = tmp_path / "big.pt"
    torch.save({f"w{i}": torch.ones(4096, 1024) for i in range(4)}, path)  # 64 MiB
    checkpoint = load_torch_file(str(path))
    mappings = _mappings_of(path)
    for tensor in checkpoint.values():  # the tensors live in a mapping of the file
        assert any(start <= tensor.data_ptr() < stop for start, stop, _ in mappings)
    # mapped, not read: only the pages around each record's local header (read through the
    # same mapping; the kernel maps a few hundred KiB around each page touched)
    assert sum(rss for _, _, rss in mappings) < 8 * 2**20
    assert checkpoint["w0"].sum() == 2**22  # touching a tensor reads its pages
    assert sum(rss for _, _, rss in _mappings_of(path)) >= 16 * 2**20


def test_parameters_come_back_as_parameters(tmp_path):
    params = {"w": torch.nn.Parameter(torch.randn(3)),
              "frozen": torch.nn.Parameter(torch.randn(2), requires_grad=False)}  # fmt: skip
    torch.save(params, tmp_path / "params.pt")
    fast = load_torch_zip_fast(str(tmp_path / "params.pt"))
    assert_same(fast, _torch_load(tmp_path / "params.pt"))
    assert type(fast["w"]) is torch.nn.Parameter and not fast["frozen"].requires_grad


def _zip_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and read_head(str(p), 4) == ZIP_MAGIC)


def test_every_sample_run_file_reads_as_torch_load_reads_it():
    files = _zip_files(SAMPLE_RUNS)
    assert len(files) > 100  # torch, Lightning and HF Trainer runs
    for path in files:
        assert_same(load_torch_zip_fast(str(path)), _torch_load(path))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_writing_to_a_tensor_never_reaches_the_file(checkpoint_file):
    before = _sha256(checkpoint_file)
    weight = load_torch_zip_fast(str(checkpoint_file))["model"]["0.weight"]
    original = weight.clone()
    weight.add_(1.0)  # the mapping is private: copy-on-write, in this process only
    assert _sha256(checkpoint_file) == before
    again = load_torch_zip_fast(str(checkpoint_file))["model"]["0.weight"]
    assert torch.equal(again, original)


def _pickle_of(path: Path) -> bytes:
    with zipfile.ZipFile(path) as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))


def _base(tmp_path: Path) -> Path:
    """A real torch.save archive: `w`, 4 floats in record data/0."""
    torch.save({"w": torch.ones(4)}, tmp_path / "base.pt")
    return tmp_path / "base.pt"


def _with_pickle(tmp_path: Path, pickled: bytes, name: str = "crafted.pt") -> Path:
    """The `_base` archive with `pickled` for its `data.pkl`."""
    out = tmp_path / name
    with zipfile.ZipFile(_base(tmp_path)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = pickled if info.filename.endswith("/data.pkl") else zin.read(info)
            zout.writestr(info.filename, data)
    return out


def _unicode(text: str) -> bytes:
    """A BINUNICODE opcode."""
    return b"X" + struct.pack("<I", len(text.encode())) + text.encode()


def _crafted_shell_pickles(marker: str) -> dict[str, bytes]:
    """`os.system("touch marker")` reached by each opcode that names a global, after torch's
    protocol-2 header (the C unpickler runs protocol-4 opcodes whatever the header says)."""
    module, command = os.system.__module__, _unicode(f"touch {marker}")  # posix on Linux
    name = module.encode() + b"\nsystem\n"
    return {
        "reduce": pickle.dumps(RunsShell(marker), protocol=2),
        "inst": b"\x80\x02(" + command + b"i" + name + b".",
        "obj": b"\x80\x02(c" + name + command + b"o.",
        "stack_global": (
            b"\x80\x02" + _unicode(module) + _unicode("system") + b"\x93" + command + b"\x85R."
        ),
    }


@pytest.mark.parametrize("exploit", [RunsShell, RunsOpen, Exploit])
def test_code_in_a_torch_save_never_runs(tmp_path, exploit):
    marker = tmp_path / "code_ran"
    torch.save({"model": small_cnn().state_dict(), "payload": exploit(str(marker))},
               tmp_path / "c.pt")  # fmt: skip
    with pytest.raises(Declined):
        load_torch_zip_fast(str(tmp_path / "c.pt"))
    # torch.load then refuses it, in the words the user has always seen
    with pytest.raises(UnsafeCheckpointError, match="never runs code"):
        load_torch_file(str(tmp_path / "c.pt"))
    assert not marker.exists()


@pytest.mark.parametrize("refs", [False, True], ids=["tensors", "refs"])
@pytest.mark.parametrize("opcode", ["reduce", "inst", "obj", "stack_global"])
def test_crafted_pickles_never_run_code(tmp_path, opcode, refs):
    marker = tmp_path / "code_ran"
    path = _with_pickle(tmp_path, _crafted_shell_pickles(str(marker))[opcode])
    with pytest.raises(Declined, match="system"):
        (scan_torch_zip if refs else load_torch_zip_fast)(str(path))
    with pytest.raises(BadInputError) as info:
        load_torch_file(str(path), refs=refs)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_what_a_pickle_does_to_a_stub_does_not_outlive_its_load(tmp_path, each_reader_loops):
    # BUILD sets `__defaults__` on the tensor stub (metadata = conj bit), then returns the stub
    poison = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}" + _unicode("__defaults__")
              + b"}" + _unicode("conj") + b"\x88s\x85s\x86b.")  # fmt: skip
    # the Python stub takes the attributes and is then refused as a bare function; the C one
    # has none to set, and the BUILD itself fails (either way torch.load decides)
    failure = (Declined, "bare function") if each_reader_loops == "python-loops" else (AttributeError, "Packer")
    with pytest.raises(failure[0], match=failure[1]):
        load_torch_zip_fast(str(_with_pickle(tmp_path, poison)))
    torch.save({"w": torch.ones(3)}, tmp_path / "next.pt")
    assert_same(load_torch_zip_fast(str(tmp_path / "next.pt")), _torch_load(tmp_path / "next.pt"))


@pytest.mark.parametrize("refs", [False, True], ids=["tensors", "refs"])
def test_a_tensor_reaching_past_its_record_is_refused(tmp_path, refs):
    pickled = _pickle_of(_base(tmp_path))
    # size (4,) -> (40,): 160 bytes over a 16-byte record
    path = _with_pickle(tmp_path, pickled.replace(b"K\x04\x85", b"K(\x85", 1), "past.pt")
    # set_ refuses it on the mapped storage; the scan's own bounds check, before any address
    with pytest.raises(Exception, match="past the end" if refs else "not resizable"):
        (scan_torch_zip if refs else load_torch_zip_fast)(str(path))
    with pytest.raises(BadInputError, match="truncated or corrupt"):
        load_torch_file(str(path), refs=refs)


@pytest.mark.parametrize(
    "payload",
    [argparse.Namespace(lr=0.1), Exploit("never-called")],
    ids=["namespace", "class-instance"],
)
def test_refused_globals_keep_torchs_refusal(tmp_path, payload):
    torch.save({"state_dict": small_cnn().state_dict(), "hp": payload}, tmp_path / "a.ckpt")
    with pytest.raises(Declined, match="global"):
        load_torch_zip_fast(str(tmp_path / "a.ckpt"))
    with pytest.raises(UnsafeCheckpointError, match="needs code to load"):
        load_torch_file(str(tmp_path / "a.ckpt"))


def test_files_the_fast_path_declines_read_as_torch_reads_them(tmp_path):
    sd = {"w": torch.arange(12.0).reshape(3, 4)}
    torch.save({"s": sd["w"].untyped_storage()}, tmp_path / "storage.pt")
    torch.save(sd, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    base = tmp_path / "plain.pt"
    torch.save(sd, base)
    deflated = tmp_path / "deflated.pt"
    with zipfile.ZipFile(base) as zin, zipfile.ZipFile(deflated, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info), compress_type=zipfile.ZIP_DEFLATED)
    for path in (tmp_path / "storage.pt", deflated):
        with pytest.raises(Declined):
            load_torch_zip_fast(str(path))
        expected = _torch_load(path)
        assert type(load_torch_file(str(path))) is type(expected)
    assert torch.equal(load_torch_file(str(tmp_path / "legacy.pt"))["w"], sd["w"])


def test_other_pickle_protocols_keep_torchs_answer(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "p4.pt", pickle_protocol=4)
    with pytest.raises(Declined, match="protocol"):
        load_torch_zip_fast(str(tmp_path / "p4.pt"))
    with pytest.raises(BadInputError, match="not a readable torch checkpoint"):
        load_torch_file(str(tmp_path / "p4.pt"))


def test_truncated_and_corrupt_files_keep_their_one_line_errors(tmp_path):
    torch.save(small_cnn().state_dict(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) * 2 // 3])
    path = _with_pickle(tmp_path, b"\x80\x02}q\x00(X", "corrupt.pt")
    for bad in (tmp_path / "cut.pt", path):
        with pytest.raises(BadInputError) as info:
            load_torch_file(str(bad))
        assert "\n" not in str(info.value) and "not a readable torch checkpoint" in str(info.value)


@pytest.mark.parametrize("change", ["signature", "method", "name"])
def test_a_local_header_is_read_where_torch_reads_it(tmp_path, change):
    # The data start comes from each record's local header (its name and extra lengths), as
    # torch's reader finds it, all headers at once. torch ignores the local method and name:
    # so does the fast reader. A header that is not one (its signature) is left to torch.
    path = tmp_path / "m.pt"
    torch.save({f"w{i}": torch.full((16,), float(i)) for i in range(12)}, path)
    assert load_torch_zip_fast(str(path))["w11"][0] == 11.0  # two-digit records read fine
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(next(n for n in zf.namelist() if n.endswith("/data/11")))
    data = bytearray(path.read_bytes())
    at = info.header_offset
    if change == "signature":
        data[at] = ord("X")
    elif change == "method":
        struct.pack_into("<H", data, at + 8, 8)  # deflated
    else:  # ".../data/11" -> ".../data/12" in the local header only
        name_end = at + 30 + struct.unpack_from("<H", data, at + 26)[0]
        data[name_end - 1] = ord("2")
    path.write_bytes(bytes(data))
    if change == "signature":
        with pytest.raises(Declined, match="local header"):
            load_torch_zip_fast(str(path))
    else:
        assert_same(load_torch_zip_fast(str(path)), _torch_load(path))
    assert_same(load_torch_file(str(path)), _torch_load(path))


# ---- scan_torch_zip: refs in place of the tensors the engine reduces ---------------------------


def _loaded(value: Any) -> Any:
    """`value` with each MappedTensorRef replaced by the tensor it loads."""
    if type(value) is MappedTensorRef:
        return value.load()
    if isinstance(value, dict):
        out = value.copy()  # of its type (a Counter counts what it is built from)
        for key, item in value.items():
            out[key] = _loaded(item)
        if hasattr(value, "__dict__"):
            vars(out).update(vars(value))
        return out
    if type(value) in (list, tuple):
        return type(value)(map(_loaded, value))
    return value


def _refs_in(value: Any) -> list[tuple[Any, MappedTensorRef]]:
    found: list[tuple[Any, MappedTensorRef]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if type(item) is MappedTensorRef:
                found.append((key, item))
            else:
                found.extend(_refs_in(item))
    elif type(value) in (list, tuple):
        for item in value:
            found.extend(_refs_in(item))
    return found


def assert_scan_reads_as_torch(path: Path) -> list[tuple[Any, MappedTensorRef]]:
    """The scan's object, refs loaded, holds torch.load's values, dtypes and layouts; each ref's
    bytes at its address are its tensor's."""
    scanned, expected = scan_torch_zip(str(path)), _torch_load(path)
    refs = _refs_in(scanned)
    for key, ref in refs:
        assert ref.name == key and ref.numel > 1 and ref.nbytes == ref.numel * ref.load().element_size()
        tensor = ref.load()
        assert tensor.is_contiguous() and tensor.dtype in (torch.float32, torch.float64,
                                                           torch.bfloat16, torch.float16)  # fmt: skip
        assert tensor.data_ptr() == ref.address
        assert ctypes.string_at(ref.address, ref.nbytes) == tensor.reshape(-1).view(
            torch.uint8).numpy().tobytes()  # fmt: skip
    _assert_values(_loaded(scanned), expected)
    return refs


def _assert_values(got: Any, expected: Any) -> None:
    """What the engine needs to agree on: types (a Parameter may come back a tensor), values bit
    for bit, dtypes and layouts."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(got, torch.Tensor)
        assert (got.dtype, got.shape, got.stride(), got.storage_offset()) == (
            expected.dtype, expected.shape, expected.stride(), expected.storage_offset())  # fmt: skip
        assert torch.equal(got.reshape(-1).view(torch.uint8) if got.is_contiguous() else
                           got.contiguous().reshape(-1).view(torch.uint8),
                           expected.contiguous().reshape(-1).view(torch.uint8))  # fmt: skip
    elif isinstance(expected, dict):
        assert type(got) is type(expected) and list(got) == list(expected)
        for key in expected:
            _assert_values(got[key], expected[key])
    elif isinstance(expected, (list, tuple)):
        assert type(got) is type(expected) and len(got) == len(expected)
        for a, b in zip(got, expected):
            _assert_values(a, b)
    elif isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == expected


def test_scan_leaves_refs_for_the_float_tensors_and_builds_the_rest(checkpoint_file):
    refs = dict(assert_scan_reads_as_torch(checkpoint_file))
    scanned = scan_torch_zip(str(checkpoint_file))
    tensors = scanned["tensors"]
    # refs: contiguous float tensors of more than one element, views of a shared storage included
    for key in ("bf16", "fp16", "row", "nan", "grad"):
        assert type(tensors[key]) is MappedTensorRef, key
    assert type(scanned["model"]["0.weight"]) is MappedTensorRef
    # built: integers, scalars (an optimizer's `step`), strided views, empty and float8 tensors
    for key in ("int64", "bool", "scalar", "transposed", "cols", "empty", "float8"):
        assert isinstance(tensors[key], torch.Tensor), key
    assert isinstance(scanned["model"]["1.num_batches_tracked"], torch.Tensor)
    assert len(refs) >= 10


def test_scan_reads_every_sample_run_file_as_torch_load_reads_it():
    files = _zip_files(SAMPLE_RUNS)
    assert sum(len(assert_scan_reads_as_torch(path)) for path in files) > 1000


def test_an_archive_past_the_table_of_record_names_is_left_to_torch_load(checkpoint_file, tmp_path,
                                                                         monkeypatch):
    # (a fresh copy: the zip facts of a file already read are cached)
    monkeypatch.setattr(_zipdir, "NUMBERED_MAX", 0)
    copy = tmp_path / "copy.pt"
    copy.write_bytes(checkpoint_file.read_bytes())
    with pytest.raises(Declined) as info:
        scan_torch_zip(str(copy))
    assert info.value.reason is Reason.ARCHIVE
    assert_same(load_torch_file(str(copy)), _torch_load(copy))


def test_what_a_pickle_does_to_a_storage_type_does_not_outlive_its_load(tmp_path):
    # BUILD sets the FloatStorage token's slots (itemsize 8, the dtype of a double)
    poison = b"\x80\x02ctorch\nFloatStorage\nN}" + _unicode("itemsize") + b"K\x08s\x86b."
    path = _with_pickle(tmp_path, poison)
    for read in (scan_torch_zip, load_torch_zip_fast):
        with pytest.raises(Declined, match="bare StorageType"):
            read(str(path))
    torch.save({"w": torch.ones(3)}, tmp_path / "next.pt")
    assert_scan_reads_as_torch(tmp_path / "next.pt")
    assert_same(load_torch_zip_fast(str(tmp_path / "next.pt")), _torch_load(tmp_path / "next.pt"))


def test_a_file_the_fast_readers_decline_says_why_at_debug_level_and_is_counted(tmp_path, caplog,
                                                                               monkeypatch):
    # a torch upgrade that broke the fast readers would make every file slower: -v counts them
    torch.save({"w": torch.ones(2)}, tmp_path / "w.pt")
    monkeypatch.setattr(torch.serialization, "get_default_mmap_options", lambda: mmap.MAP_SHARED)
    monkeypatch.setattr(_torchio, "READ", Counter())
    monkeypatch.setattr(_torchio, "BY_TORCH_LOAD", Counter())
    with caplog.at_level(logging.DEBUG, logger="normscope"):
        loaded = load_torch_file(str(tmp_path / "w.pt"))
    assert torch.equal(loaded["w"], torch.ones(2))
    [line] = [r.getMessage() for r in caplog.records if "declined" in r.getMessage()]
    assert r"load_torch_zip_fast declined: " in line and "(torch.load is set to map files shared)" in line
    assert caplog.records[0].levelno == logging.DEBUG
    assert _torchio.fallback_summary() == (
        f"torch files read by torch.load: 1 of 1 (reasons: {Reason.SETTINGS.value}: 1)")


def test_a_file_the_fast_readers_take_logs_nothing(checkpoint_file, caplog):
    with caplog.at_level(logging.DEBUG, logger="normscope"):
        load_torch_file(str(checkpoint_file), refs=True)
    assert not caplog.records


def test_verbose_counts_the_files_the_fast_path_missed_on_stderr(tmp_path):
    # -v counts, by reason, once at the end: a dtype pickled as a value, which the scan leaves to
    # the reader with torch; a tensor in a tuple, and a global outside the allow-list, which go
    # to torch.load
    for name, extra in (("dtype", torch.float32), ("tuple", (torch.ones(2),)),
                        ("date", datetime.date(2026, 1, 1))):  # fmt: skip
        (tmp_path / name).mkdir()
        torch.save({"w": torch.full((3,), 1.0), "extra": extra}, tmp_path / name / "0.pt")

    def stderr(name: str, code: int) -> str:
        done = subprocess.run([sys.executable, "-m", "normscope", "-v", "analyze", str(tmp_path / name),
                               "--format", "json"], capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == code, done.stderr
        return done.stderr

    assert (f"torch files read by torch.load: 0 of 1; read without in-place refs: 1 (reasons: "
            f"{Reason.PLACE.value}: 1)") in stderr("dtype", 0)
    assert f"torch files read by torch.load: 1 of 1 (reasons: {Reason.PLACE.value}: 1)" in stderr("tuple", 0)
    assert (f"torch files read by torch.load: 1 of 1 (reasons: {Reason.GLOBAL.value}: 1)"
            in stderr("date", 2))  # torch.load refuses the date too
