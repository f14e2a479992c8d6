"""The quick central-directory reader against `zipfile`, on real torch.save archives and odd zips."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest
import torch

from normscope.sources._zipdir import Member, _zip64_values, read_directory, read_member


def central_directory(f):  # type: ignore[no-untyped-def]
    """`read_directory`'s columns as one `Member` per entry, the form zipfile's view compares to."""
    directory = read_directory(f)
    return None if directory is None else list(map(Member, *directory))

SAMPLES = Path(__file__).resolve().parent.parent / "sample_runs"
ARCHIVES = sorted(p for p in SAMPLES.rglob("*") if p.suffix in (".pt", ".ckpt"))


def _as_zipfile_sees_it(path: Path) -> list[tuple]:
    with zipfile.ZipFile(path) as zf:
        return [(i.filename, i.flag_bits, i.compress_type, i.CRC, i.compress_size, i.file_size,
                 i.header_offset) for i in zf.infolist()]


def test_sample_archives_read_the_same_as_zipfile():
    assert len(ARCHIVES) > 50
    for path in ARCHIVES:
        with open(path, "rb") as f:
            members = central_directory(f)
            assert members is not None, path
            assert [tuple(m) for m in members] == _as_zipfile_sees_it(path), path
            with zipfile.ZipFile(path) as zf:
                for m in members:
                    if m.name.endswith(("data.pkl", "byteorder")):
                        assert read_member(f, m) == zf.read(m.name)


def test_a_fresh_torch_save_with_many_records(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({f"t{i}": torch.full((i % 7 + 1,), float(i)) for i in range(3000)}, path)
    with open(path, "rb") as f:
        members = central_directory(f)
    assert [tuple(m) for m in members] == _as_zipfile_sees_it(path)


def _write_zip(path: Path, *, comment: bytes = b"", compress: int = zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path, "w", compression=compress) as zf:
        zf.writestr("archive/data.pkl", b"x" * 100)
        zf.comment = comment


def test_unusual_archives_are_left_to_zipfile(tmp_path):
    commented = tmp_path / "c.zip"
    _write_zip(commented, comment=b"hello")
    prepended = tmp_path / "p.zip"
    _write_zip(prepended)
    prepended.write_bytes(b"#!/bin/sh\n" + prepended.read_bytes())
    truncated = tmp_path / "t.pt"
    torch.save({"w": torch.ones(100)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:-30])
    empty = tmp_path / "e.zip"
    empty.write_bytes(b"")
    for path in (commented, prepended, truncated, empty):
        with open(path, "rb") as f:
            assert central_directory(f) is None, path


def test_compressed_or_corrupted_members_are_not_read(tmp_path):
    deflated = tmp_path / "d.zip"
    _write_zip(deflated, compress=zipfile.ZIP_DEFLATED)
    with open(deflated, "rb") as f:
        (member,) = central_directory(f)
        assert member.method == zipfile.ZIP_DEFLATED and read_member(f, member) is None
    flipped = tmp_path / "f.zip"
    _write_zip(flipped)
    data = bytearray(flipped.read_bytes())
    data[data.index(b"x" * 100)] = ord("y")  # a byte of the member changes: its CRC no longer fits
    flipped.write_bytes(bytes(data))
    with open(flipped, "rb") as f:
        (member,) = central_directory(f)
        assert read_member(f, member) is None


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [((True, True, True), [1, 2, 3]), ((False, False, True), [1]), ((True, False, False), [1])],
)
def test_zip64_extra_values_in_order(wanted, expected):
    values = [1, 2, 3][: sum(wanted)]
    extra = struct.pack("<2H", 0x9901, 2) + b"ab" + struct.pack(f"<2H{len(values)}Q", 1, 8 * len(values), *values)
    assert _zip64_values(extra, *wanted) == expected
    assert _zip64_values(b"", *wanted) is None


def test_the_numpy_reading_takes_real_archives_and_agrees_with_the_walk():
    from normscope.sources._zipdir import _columns, _walk

    for path in ARCHIVES[:20]:
        data = path.read_bytes()
        with zipfile.ZipFile(path) as zf:
            count = len(zf.infolist())
            start = min(i.header_offset for i in zf.infolist())
        assert start == 0
        cd_at = data.rindex(b"PK\x05\x06")
        cd_size, cd_offset = struct.unpack_from("<2L", data, cd_at + 12)
        if cd_offset == 0xFFFFFFFF:  # zip64 end record: take the directory from zipfile's view
            continue
        directory = data[cd_offset : cd_offset + cd_size]
        fast = _columns(directory, count, len(data))
        assert fast is not None, path
        assert fast == _walk(directory, count, len(data)), path


def test_a_member_signature_inside_a_name_falls_back_to_the_walk(tmp_path):
    # a name holding the central-directory signature makes a false candidate: the numpy reading
    # must notice (its chain no longer matches) and the walk must still read every member
    path = tmp_path / "odd.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"x")
        zf.writestr("archive/PK\x01\x02odd", b"y")
    with open(path, "rb") as f:
        members = central_directory(f)
    assert [tuple(m) for m in members] == _as_zipfile_sees_it(path)


def test_le_field_reads_little_endian_fields_at_every_position():
    import struct

    import numpy as np

    from normscope.sources._zipdir import le_field

    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, 4096, dtype=np.uint8)
    at = rng.integers(0, 4096 - 8, 500)
    for size, code in ((1, "<B"), (2, "<H"), (4, "<I"), (8, "<q")):
        got = le_field(data, at, size)
        assert got.dtype == np.int64
        assert got.tolist() == [struct.unpack_from(code, data.tobytes(), a)[0] for a in at.tolist()]
