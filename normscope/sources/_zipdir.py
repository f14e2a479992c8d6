"""A zip archive's central directory, read in one pass for the archives `torch.save` writes.

`zipfile.ZipFile` builds a `ZipInfo` object per member, paid again for every file of a run: a
large share of opening a checkpoint of thousands of tensors. Sniffing and the fast torch reader
only need each member's name, method, flags, sizes, CRC and local-header offset, which this reads
with numpy at once or, failing that, with one `struct` call per member (figures:
docs/benchmarks.md, "Behind the design").

It handles exactly what torch writes: a single-disk archive, no archive comment, a zip64 end
record (torch always writes one), zip64 extra fields where sizes or offsets overflow 32 bits, and
no data before the first member. Anything else (or anything inconsistent) returns None and the
caller reads the archive with `zipfile`, which then decides what is readable and what is corrupt.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

_END = struct.Struct("<4s4H2LH")  # end of central directory record, 22 bytes
_END_SIG = b"PK\x05\x06"
_LOCATOR = struct.Struct("<4sLQL")  # zip64 end of central directory locator, 20 bytes
_LOCATOR_SIG = b"PK\x06\x07"
_END64 = struct.Struct("<4sQ2H2L4Q")  # zip64 end of central directory record, 56 bytes
_END64_SIG = b"PK\x06\x06"
_MEMBER = struct.Struct("<4s6H3L5H2L")  # central directory file header, 46 bytes
_MEMBER_SIG = b"PK\x01\x02"
LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # local file header, 30 bytes
LOCAL_SIG = b"PK\x03\x04"
_ZIP64_EXTRA = 0x0001
# general-purpose flags torch's reader (miniz) refuses: encrypted, strong encryption, masked
# local headers; and compressed patched data, which nothing here reads either
_UNSUPPORTED_FLAGS = 0x0001 | 0x0020 | 0x0040 | 0x2000
_MAX32 = 0xFFFFFFFF
STORED = 0


class Member(NamedTuple):
    name: str
    flags: int
    method: int
    crc: int
    compressed_size: int
    size: int
    header_offset: int


class Directory(NamedTuple):
    """The members' fields as columns, in directory order (`Member`'s fields, in its order).

    Columns rather than a `Member` per entry: the torch source reads the directories of runs of
    tens of thousands of records, and only two or three members are ever needed one by one."""

    names: list[str]
    flags: list[int]
    methods: list[int]
    crcs: list[int]
    compressed_sizes: list[int]
    sizes: list[int]
    header_offsets: list[int]

    def member(self, i: int) -> Member:
        return Member(*(column[i] for column in self))


def read_directory(f: BinaryIO) -> Directory | None:
    """The members of the open archive `f`, in directory order, as columns; None: read it with
    `zipfile`."""
    size = os.fstat(f.fileno()).st_size
    if size < _END.size + _LOCATOR.size:
        return None
    f.seek(size - _END.size - _LOCATOR.size)
    tail = f.read(_END.size + _LOCATOR.size)
    sig, disk, cd_disk, on_disk, count, cd_size, cd_offset, comment = _END.unpack_from(
        tail, _LOCATOR.size
    )
    if sig != _END_SIG or disk or cd_disk or on_disk != count or comment:
        return None
    end_at = size - _END.size
    lsig, _, end64_at, _ = _LOCATOR.unpack_from(tail)
    if lsig == _LOCATOR_SIG:
        if not 0 <= end64_at <= size - _END64.size:
            return None
        f.seek(end64_at)
        record = f.read(_END64.size)
        if len(record) != _END64.size:
            return None
        sig64, _, _, _, disk, cd_disk, on_disk, count, cd_size, cd_offset = _END64.unpack(record)
        if sig64 != _END64_SIG or disk or cd_disk or on_disk != count:
            return None
        end_at = end64_at
    # the directory must end where the end records begin: no data prepended to the archive
    if cd_offset + cd_size != end_at:
        return None
    f.seek(cd_offset)
    directory = f.read(cd_size)
    if len(directory) != cd_size:
        return None
    return _columns(directory, count, size) or _walk(directory, count, size)


def _refused_by_torch(flags: Any, method: Any, csize: Any, usize: Any, disk: Any, offset: Any,
                      archive_size: int) -> Any:  # fmt: skip
    """What torch's zip reader (miniz) refuses in any member of an archive: encryption (or another
    flag in `_UNSUPPORTED_FLAGS`), another disk, a stored member whose two sizes differ, data
    without compressed bytes, compressed bytes past the end of the file. Such an archive is left
    to `zipfile` and `torch.load`, so that torch decides about it. Written with `&`, `|` and
    comparisons only, so one member's ints give a bool and `_columns`' arrays give one per member."""
    return (
        ((flags & _UNSUPPORTED_FLAGS) != 0)
        | (disk != 0)
        | ((method == STORED) & (csize != usize))
        | ((usize != 0) & (csize == 0))
        | (offset + LOCAL_HEADER.size + csize > archive_size)
    )


def le_field(data: np.ndarray, at: np.ndarray, size: int) -> np.ndarray:
    """The little-endian unsigned field of `size` bytes at each position `at` of the byte array
    `data`, as int64: one gather per byte, so memory stays O(len(at)) whatever the header."""
    import numpy as np

    value = data[at].astype(np.int64)
    for k in range(1, size):
        value |= data[at + k].astype(np.int64) << (8 * k)
    return value


# Past this the walk reads the directory: the numpy reading holds a few byte masks of its size.
_COLUMNS_MAX_BYTES = 64 << 20  # over a million members of the names torch writes


def _columns(directory: bytes, count: int, archive_size: int) -> Directory | None:
    """All members at once with numpy (a third of the walk's time): each is found
    by its signature and the chain of lengths must lead from the first to the end of the
    directory through exactly those. None where that does not hold (a signature inside a name,
    a zip64 field, a name that does not decode) or the directory is huge: the walk then decides.
    Memory: a few bytes per byte of directory and per member, whatever the input claims."""
    if not 0 < count * _MEMBER.size <= len(directory) <= _COLUMNS_MAX_BYTES:
        return None
    import numpy as np

    raw = np.frombuffer(directory, dtype=np.uint8)
    found = raw[:-3] == _MEMBER_SIG[0]
    for k in (1, 2, 3):
        found &= raw[k : len(raw) - 3 + k] == _MEMBER_SIG[k]
    starts = np.flatnonzero(found)
    if len(starts) != count or starts[0] != 0 or starts[-1] + _MEMBER.size > len(raw):
        return None

    def field(offset: int, size: int) -> np.ndarray:  # of every member
        return le_field(raw, starts + offset, size)

    name_len = field(28, 2)
    ends = starts + _MEMBER.size + name_len + field(30, 2) + field(32, 2)
    if not (np.array_equal(ends[:-1], starts[1:]) and ends[-1] == len(raw)):
        return None
    csize, usize, offset = field(20, 4), field(24, 4), field(42, 4)
    if (csize == _MAX32).any() or (usize == _MAX32).any() or (offset == _MAX32).any():
        return None
    flag_bits, method = field(8, 2), field(10, 2)
    if _refused_by_torch(flag_bits, method, csize, usize, field(34, 2), offset, archive_size).any():
        return None
    flags = flag_bits.tolist()
    names = _ascii_names(raw, starts + _MEMBER.size, name_len)
    if names is None:
        try:
            names = [
                directory[at : at + n].decode("utf-8" if flag & 0x800 else "cp437")
                for at, n, flag in zip((starts + _MEMBER.size).tolist(), name_len.tolist(), flags)
            ]
        except UnicodeDecodeError:
            return None
    return Directory(names, flags, method.tolist(), field(16, 4).tolist(),
                     csize.tolist(), usize.tolist(), offset.tolist())  # fmt: skip


def _ascii_names(raw: np.ndarray, at: np.ndarray, lengths: np.ndarray) -> list[str] | None:
    """The names, where all are ASCII (the same text in UTF-8 and cp437, whatever the flags say):
    their bytes gathered and decoded at once, then cut, rather than a decode per name. None where
    some name is not ASCII."""
    import numpy as np

    total = int(lengths.sum())
    if total > len(raw):
        return None
    ends = np.cumsum(lengths)
    # byte j of the blob comes from its name's start plus its place in that name
    gather = np.repeat(at - (ends - lengths), lengths) + np.arange(total, dtype=np.int64)
    blob = raw[gather].tobytes()
    if not blob.isascii():
        return None
    text = blob.decode("ascii")
    cuts = [0, *ends.tolist()]
    return list(map(text.__getitem__, map(slice, cuts[:-1], cuts[1:])))


def _walk(directory: bytes, count: int, archive_size: int) -> Directory | None:
    """The members one after another, zip64 extra fields included."""
    cd_size = len(directory)
    members: list[Member] = []
    pos = 0
    try:
        for _ in range(count):
            (sig, _, _, flags, method, _, _, crc, csize, usize, name_len, extra_len,
             comment_len, disk, _, _, offset) = _MEMBER.unpack_from(directory, pos)
            if sig != _MEMBER_SIG:
                return None
            start = pos + _MEMBER.size
            raw_name = directory[start : start + name_len]
            name = raw_name.decode("utf-8" if flags & 0x800 else "cp437")
            if _MAX32 in (csize, usize, offset):
                extra = directory[start + name_len : start + name_len + extra_len]
                found = _zip64_values(extra, usize == _MAX32, csize == _MAX32, offset == _MAX32)
                if found is None:
                    return None
                usize, csize, offset = (
                    found.pop(0) if usize == _MAX32 else usize,
                    found.pop(0) if csize == _MAX32 else csize,
                    found.pop(0) if offset == _MAX32 else offset,
                )
            if _refused_by_torch(flags, method, csize, usize, disk, offset, archive_size):
                return None
            members.append(Member(name, flags, method, crc, csize, usize, offset))
            pos = start + name_len + extra_len + comment_len
    except (struct.error, UnicodeDecodeError):
        return None
    if pos != cd_size:
        return None
    return Directory(*map(list, zip(*members))) if members else Directory([], [], [], [], [], [], [])


def _zip64_values(extra: bytes, *wanted: bool) -> list[int] | None:
    """The 8-byte values of the zip64 extra field, in the order zip defines, for those `wanted`."""
    pos = 0
    while pos + 4 <= len(extra):
        kind, length = struct.unpack_from("<2H", extra, pos)
        if kind == _ZIP64_EXTRA:
            need = sum(wanted)
            if length < 8 * need:
                return None
            return list(struct.unpack_from(f"<{need}Q", extra, pos + 4))
        pos += 4 + length
    return None


def read_member(f: BinaryIO, member: Member) -> bytes | None:
    """A stored member's bytes, checked against its local header and CRC; None: use `zipfile`
    (compressed, encrypted, or not what the directory says)."""
    if member.method != STORED or member.flags & 0x1:
        return None
    f.seek(member.header_offset)
    header = f.read(LOCAL_HEADER.size)
    if len(header) != LOCAL_HEADER.size:
        return None
    sig, _, _, _, _, _, _, _, _, name_len, extra_len = LOCAL_HEADER.unpack(header)
    if sig != LOCAL_SIG:
        return None
    name = f.read(name_len)
    if name.decode("utf-8" if member.flags & 0x800 else "cp437", "replace") != member.name:
        return None
    f.seek(extra_len, os.SEEK_CUR)
    data = f.read(member.size)
    if len(data) != member.size or zlib.crc32(data) != member.crc:
        return None
    return data
