"""The archive layer against `zipfile`: real torch.save archives read the same, anything else is
"unusual" (left to zipfile for sniffing, and to torch.load for reading)."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from normscope.sources._fast_torch_zip import load_torch_zip_fast
from normscope.sources._zipdir import Member, _zip64_values, le_field, read_directory, read_member, zip_facts

# every test here, with the reader's C loops and with its Python ones
pytestmark = pytest.mark.usefixtures("each_reader_loops")

SAMPLES = Path(__file__).resolve().parent.parent / "sample_runs"
ARCHIVES = sorted(p for p in SAMPLES.rglob("*") if p.suffix in (".pt", ".ckpt"))


def central_directory(path: Path) -> list[Member] | None:
    """`read_directory`'s columns as one `Member` per entry, the form zipfile's view compares to."""
    with open(path, "rb") as f:
        directory = read_directory(f)
    return None if directory is None else list(map(Member, *directory))


def _as_zipfile_sees_it(path: Path) -> list[tuple]:
    with zipfile.ZipFile(path) as zf:
        return [(i.filename, i.CRC, i.file_size, i.header_offset) for i in zf.infolist()]


def test_sample_archives_read_the_same_as_zipfile():
    assert len(ARCHIVES) > 50
    for path in ARCHIVES:
        members = central_directory(path)
        assert members is not None, path
        assert [tuple(m) for m in members] == _as_zipfile_sees_it(path), path
        with open(path, "rb") as f, zipfile.ZipFile(path) as zf:
            for m in members:
                assert read_member(f, m) == zf.read(m.name)
        facts = zip_facts(str(path))
        assert facts.records is not None and facts.pickle is not None, path


def test_a_fresh_torch_save_with_many_records(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({f"t{i}": torch.full((i % 7 + 1,), float(i)) for i in range(3000)}, path)
    assert [tuple(m) for m in central_directory(path)] == _as_zipfile_sees_it(path)
    records = zip_facts(str(path)).records
    with zipfile.ZipFile(path) as zf:
        for i in (0, 7, 2999):
            info = zf.getinfo(f"{records.archive}data/{i}")
            assert (records.header_offsets[i], records.sizes[i]) == (info.header_offset, info.file_size)


def _write_zip(path: Path, *, comment: bytes = b"", compress: int = zipfile.ZIP_STORED,
               name: str = "archive/data.pkl") -> None:  # fmt: skip
    with zipfile.ZipFile(path, "w", compression=compress) as zf:
        zf.writestr(name, b"x" * 100)
        zf.comment = comment


def test_unusual_archives_are_not_read(tmp_path):
    commented = tmp_path / "c.zip"
    _write_zip(commented, comment=b"hello")
    prepended = tmp_path / "p.zip"
    _write_zip(prepended)
    prepended.write_bytes(b"#!/bin/sh\n" + prepended.read_bytes())
    deflated = tmp_path / "d.zip"
    _write_zip(deflated, compress=zipfile.ZIP_DEFLATED)
    signature = tmp_path / "s.zip"  # a false candidate: the chain of lengths no longer matches
    _write_zip(signature, name="archive/PK\x01\x02odd")
    truncated = tmp_path / "t.pt"
    torch.save({"w": torch.ones(100)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:-30])
    empty = tmp_path / "e.zip"
    empty.write_bytes(b"")
    for path in (commented, prepended, deflated, signature, truncated, empty):
        assert central_directory(path) is None, path


def test_an_unusual_torch_archive_is_sniffed_by_zipfile_without_records(tmp_path):
    torch.save({"w": torch.ones(4)}, tmp_path / "w.pt")
    extra = tmp_path / "extra.pt"  # a member torch.save does not write
    with zipfile.ZipFile(tmp_path / "w.pt") as zin, zipfile.ZipFile(extra, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
        zout.writestr(info.filename.split("/")[0] + "/notes.txt", b"hi")
    facts = zip_facts(str(extra))
    assert facts.has_pickle and facts.pickle is not None and facts.records is None
    assert torch.equal(torch.load(extra, weights_only=True)["w"], torch.ones(4))


def test_a_member_whose_bytes_no_longer_match_its_crc_is_not_read(tmp_path):
    flipped = tmp_path / "f.zip"
    _write_zip(flipped)
    data = bytearray(flipped.read_bytes())
    data[data.index(b"x" * 100)] = ord("y")
    flipped.write_bytes(bytes(data))
    (member,) = central_directory(flipped)
    with open(flipped, "rb") as f:
        assert read_member(f, member) is None


def _with_zip64_directory(src: Path, dst: Path) -> None:
    """`src` with every central-directory entry's sizes and offset moved to a zip64 extra field
    (what torch writes for members past 4 GiB)."""
    data = src.read_bytes()
    with zipfile.ZipFile(src) as zf:
        infos = zf.infolist()
    body = data[: data.index(b"PK\x01\x02", max(i.header_offset for i in infos))]
    directory = b""
    for i in infos:
        name = i.filename.encode()
        extra = struct.pack("<2H3Q", 1, 24, i.file_size, i.compress_size, i.header_offset)
        directory += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, i.flag_bits, 0, 0, 0, i.CRC,
                                 0xFFFFFFFF, 0xFFFFFFFF, len(name), len(extra), 0, 0, 0, 0,
                                 0xFFFFFFFF) + name + extra  # fmt: skip
    end_record = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(infos), len(infos), len(directory),
                             len(body), 0)  # fmt: skip
    dst.write_bytes(body + directory + end_record)


def test_zip64_sizes_and_offsets_read_as_zipfile_reads_them(tmp_path):
    torch.save({f"w{i}": torch.full((i + 1,), float(i)) for i in range(5)}, tmp_path / "w.pt")
    _with_zip64_directory(tmp_path / "w.pt", tmp_path / "z.pt")
    assert central_directory(tmp_path / "z.pt") is not None
    assert [tuple(m) for m in central_directory(tmp_path / "z.pt")] == _as_zipfile_sees_it(tmp_path / "w.pt")


@pytest.mark.parametrize(("count", "expected"), [(3, [1, 2, 3]), (1, [1])])
def test_zip64_extra_values_in_order(count, expected):
    extra = struct.pack("<2H", 0x9901, 2) + b"ab" + struct.pack("<2H3Q", 1, 24, 1, 2, 3)
    assert _zip64_values(extra, count) == expected
    assert _zip64_values(b"", count) is None
    assert _zip64_values(struct.pack("<2HQ", 1, 8, 1), 2) is None  # shorter than it must be


def test_le_field_reads_little_endian_fields_at_every_position():
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, 4096, dtype=np.uint8)
    at = rng.integers(0, 4096 - 8, 500)
    for size, code in ((1, "<B"), (2, "<H"), (4, "<I"), (8, "<q")):
        got = le_field(data, at, size)
        assert got.dtype == np.int64
        assert got.tolist() == [struct.unpack_from(code, data.tobytes(), a)[0] for a in at.tolist()]


def test_an_archive_named_in_utf8_has_its_records(tmp_path):
    # older torch versions named the archive after the file: a name that is not ASCII is UTF-8,
    # flagged so
    torch.save({"w": torch.arange(3.0)}, tmp_path / "w.pt")
    path = tmp_path / "модель.pt"
    with zipfile.ZipFile(tmp_path / "w.pt") as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            zout.writestr("модель/" + info.filename.split("/", 1)[1], zin.read(info))
    assert [tuple(m) for m in central_directory(path)] == _as_zipfile_sees_it(path)
    facts = zip_facts(str(path))
    assert facts.records is not None and facts.records.archive == "модель/"
    assert torch.equal(load_torch_zip_fast(str(path))["w"], torch.load(path, weights_only=True)["w"])


def test_opening_a_run_reads_each_checkpoints_directory_once(monkeypatch):
    # the layouts' sniffers, then the reader's sniff and the loader each ask every file: 61
    # files, one read each (a cache bounded by a count below the run's length read each three times)
    from normscope.sources import _zipdir, open_run

    run_dir = SAMPLES / "digits_bn_cnn_sgd"
    files = sorted(run_dir.glob("*.pt"))
    assert len(files) > 32
    read: list[str] = []
    real = _zipdir._zip_facts._read
    monkeypatch.setattr(_zipdir._zip_facts, "_read", lambda path: read.append(path) or real(path))
    run = open_run(run_dir)
    assert len(run.snapshots) == len(files)
    assert sorted(read) == sorted(map(str, files))


def test_the_facts_cache_holds_at_most_its_budget_and_drops_the_oldest(tmp_path):
    from normscope.sources import _zipdir

    paths = []
    for i in range(6):
        paths.append(tmp_path / f"c{i}.pt")
        torch.save({f"w{j}": torch.ones(2) for j in range(200)}, paths[-1])
    one = _zipdir._cost(zip_facts(str(paths[0])))
    reads: list[str] = []
    cache = _zipdir._FactsCache(lambda p: reads.append(p) or _zipdir._read_facts(p), budget_bytes=3 * one)
    for p in paths:
        cache(str(p), (1,))
    assert cache._held <= 3 * one and len(cache._entries) == 3
    cache(str(paths[-1]), (1,))  # kept: no read
    cache(str(paths[0]), (1,))  # the oldest, dropped: read again
    assert reads == [*map(str, paths), str(paths[0])]
    cache(str(paths[-1]), (2,))  # another identity (a rewritten file): read again
    assert reads[-1] == str(paths[-1])
    # an entry bigger than the budget is still kept (the next question about that file is next)
    small = _zipdir._FactsCache(_zipdir._read_facts, budget_bytes=1)
    assert small(str(paths[0]), (1,)) is small(str(paths[0]), (1,))
    small.cache_clear()
    assert small._held == 0 and not small._entries


def test_a_run_of_large_checkpoints_is_parsed_once_a_file(tmp_path, monkeypatch):
    # 40 files of 3,000 tensors: past the 32 entries the cache once held, within its bytes
    from normscope.sources import _zipdir, open_run

    for epoch in range(40):
        torch.save({"epoch": epoch, "model": {f"layer{i}.weight": torch.full((2, 2), float(epoch + i))
                                              for i in range(3000)}}, tmp_path / f"epoch_{epoch:03d}.pt")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    read: list[str] = []
    real = _zipdir._zip_facts._read
    monkeypatch.setattr(_zipdir._zip_facts, "_read", lambda path: read.append(path) or real(path))
    run = open_run(tmp_path)
    assert len(run.snapshots) == 40 and len(read) == len(set(read)) == 40
    assert run.warnings[0] == "ignored 1 non-checkpoint file(s): notes.txt"
    # a run larger than the cache: the sniffers' pass parses each file, and the reader, which
    # sniffs a file and reads it in turn, once more (not once for its sniff and again to read)
    _zipdir._zip_facts.cache_clear()
    monkeypatch.setattr(_zipdir._zip_facts, "_budget", 4 * _zipdir._cost(real(read[0])))
    read.clear()
    assert len(open_run(tmp_path).snapshots) == 40
    assert len(read) == 80 and all(read.count(p) == 2 for p in read)


def test_the_facts_cache_answers_threads_at_once(tmp_path):
    # the engine's reader threads and a Dask worker's task threads share it
    from concurrent.futures import ThreadPoolExecutor

    from normscope.sources import _zipdir

    paths = []
    for i in range(8):
        paths.append(str(tmp_path / f"c{i}.pt"))
        torch.save({f"w{j}": torch.ones(2) for j in range(50)}, paths[-1])
    cache = _zipdir._FactsCache(_zipdir._read_facts, budget_bytes=3 * _zipdir._cost(zip_facts(paths[0])))
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda k: cache(paths[k % 8], (1,)).pickle, range(4000)))
    assert all(a is not None for a in answers)
    assert len(cache._entries) <= 3 and cache._held == sum(cost for _, cost in cache._entries.values())
