"""The archive layer of a `torch.save` zip: its directory, its small records, where its tensor
records lie. Nothing here imports torch or unpickles anything.

`torch.save` writes one kind of zip: single-disk, no comment, every member stored (not compressed
or encrypted) under one directory `<archive>/` — `data.pkl`, `data/0` … `data/<n-1>`, a few small
records (`version`, `byteorder`, …) — and a zip64 end record. `read_directory` reads that kind,
with numpy over the whole central directory at once (`zipfile` builds an object per member;
docs/benchmarks.md, "Behind the design"). Anything else — a comment, data before the first member,
a compressed member, a name that is not UTF-8, a member torch does not write, a small record whose
CRC fails — is "unusual": `zipfile` reads it only to sniff it, its `records` are None, the fast
reader declines it and `torch.load` decides. So this layer need not know all that torch's reader
(miniz) accepts: it accepts less, and leaves the rest to torch.
"""

from __future__ import annotations

import functools
import operator
import os
import struct
import threading
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from itertools import compress, repeat
from typing import BinaryIO, NamedTuple

import numpy as np

from . import _speedups

_END = struct.Struct("<4s4H2LH")  # end of central directory record, 22 bytes
_LOCATOR = struct.Struct("<4sLQL")  # zip64 end of central directory locator, 20 bytes
_END64 = struct.Struct("<4sQ2H2L4Q")  # zip64 end of central directory record, 56 bytes
_MEMBER_SIZE = 46  # central directory file header
_MEMBER_SIG = b"PK\x01\x02"
LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # local file header, 30 bytes
LOCAL_SIG = b"PK\x03\x04"
_MAX32 = 0xFFFFFFFF
_FLAGS = 0x0008 | 0x0800  # the flags torch writes: data descriptor, UTF-8 names
# Past this the directory is left to zipfile: the numpy reading holds a few byte masks of its size.
_MAX_DIRECTORY = 64 << 20  # over a million members of the names torch writes
# the small records torch.save writes beside data.pkl and data/<i>
_SMALL = frozenset({"version", ".data/version", ".format_version", ".storage_alignment",
                    "byteorder", ".data/serialization_id"})  # fmt: skip
NUMBERED_MAX = 1 << 18  # records; ~25 MB for the table of names


class Member(NamedTuple):
    name: str
    crc: int
    size: int
    header_offset: int


class Directory(NamedTuple):
    """The members' fields as columns, in directory order (`Member`'s fields): the torch source
    reads directories of tens of thousands of records, and needs two or three members one by one."""

    names: list[str]
    crcs: np.ndarray  # int64, as the other columns
    sizes: np.ndarray
    header_offsets: np.ndarray

    def member(self, i: int) -> Member:
        return Member(*(column[i] for column in self))


def read_directory(f: BinaryIO) -> Directory | None:
    """The members of the open archive `f`, as columns; None for an archive of another kind
    than torch.save writes (module docstring)."""
    size = os.fstat(f.fileno()).st_size
    if size < _END.size + _LOCATOR.size:
        return None
    f.seek(size - _END.size - _LOCATOR.size)
    tail = f.read(_END.size + _LOCATOR.size)
    sig, disk, cd_disk, on_disk, count, cd_size, cd_offset, comment = _END.unpack_from(tail, 20)
    if sig != b"PK\x05\x06" or disk or cd_disk or on_disk != count or comment:
        return None
    end_at = size - _END.size
    lsig, _, end64_at, _ = _LOCATOR.unpack_from(tail)
    if lsig == b"PK\x06\x07":  # torch always writes one, right before the end record
        if end64_at != end_at - _LOCATOR.size - _END64.size:
            return None
        f.seek(end64_at)
        sig, _, _, _, disk, cd_disk, on_disk, count, cd_size, cd_offset = _END64.unpack(
            f.read(_END64.size))  # fmt: skip
        if sig != b"PK\x06\x06" or disk or cd_disk or on_disk != count:
            return None
        end_at = end64_at
    # the directory ends where the end records begin: no data prepended to the archive
    if cd_offset + cd_size != end_at or not 0 < count * _MEMBER_SIZE <= cd_size <= _MAX_DIRECTORY:
        return None
    f.seek(cd_offset)
    return _members(f.read(cd_size), count, size)


def le_field(data: np.ndarray, at: np.ndarray, size: int) -> np.ndarray:
    """The little-endian unsigned field of `size` bytes at each position `at` of the byte array
    `data`, as int64: one gather per byte, so memory stays O(len(at)) whatever the header."""
    value = data[at].astype(np.int64)
    for k in range(1, size):
        value |= data[at + k].astype(np.int64) << (8 * k)
    return value


def _members(directory: bytes, count: int, archive_size: int) -> Directory | None:
    """Every member at once: each found by its signature, and the chain of lengths must lead from
    the first to the end of the directory through exactly those (a signature inside a name breaks
    it). Memory: a few bytes per byte of directory, whatever the input claims. The C loop
    (`_speedups`) reads the common case; anything else is read here."""
    fast = _speedups.torchzip
    if fast is not None:
        crcs, sizes, offsets = (np.empty(count, dtype=np.int64) for _ in range(3))
        names = fast.members(directory, count, archive_size, crcs, sizes, offsets)
        if names is not None:
            return Directory(names, crcs, sizes, offsets)
    raw = np.frombuffer(directory, dtype=np.uint8)
    found = raw[:-3] == _MEMBER_SIG[0]
    for k in (1, 2, 3):
        found &= raw[k : len(raw) - 3 + k] == _MEMBER_SIG[k]
    starts = np.flatnonzero(found)
    if len(starts) != count or starts[0] != 0 or starts[-1] + _MEMBER_SIZE > len(raw):
        return None

    def column(offset: int, size: int) -> np.ndarray:  # of every member
        return le_field(raw, starts + offset, size)

    name_at, name_len, extra_len = starts + _MEMBER_SIZE, column(28, 2), column(30, 2)
    ends = name_at + name_len + extra_len + column(32, 2)
    if not (np.array_equal(ends[:-1], starts[1:]) and ends[-1] == len(raw)):
        return None
    flags, csize, usize, offset = column(8, 2), column(20, 4), column(24, 4), column(42, 4)
    wide = [usize, csize, offset]
    for i in np.flatnonzero((usize == _MAX32) | (csize == _MAX32) | (offset == _MAX32)).tolist():
        # zip64: the values in the member's extra field, in this order, for those at 0xFFFFFFFF
        at, wanted = int(name_at[i] + name_len[i]), [c for c in wide if c[i] == _MAX32]
        extra = directory[at : at + int(extra_len[i])]
        values = _zip64_values(extra, len(wanted))
        if values is None or max(values) > archive_size:
            return None
        for c, value in zip(wanted, values):
            c[i] = value
    if (
        ((flags & ~_FLAGS) | column(10, 2) | column(34, 2)).any()  # flags, method, disk
        or (csize != usize).any()
        or (offset + LOCAL_HEADER.size + usize > archive_size).any()
    ):
        return None
    names = _names(raw, name_at, name_len, flags)
    if names is None:
        return None
    return Directory(names, column(16, 4), usize, offset)


def _zip64_values(extra: bytes, count: int) -> list[int] | None:
    """The first `count` 8-byte values of the zip64 field (id 1) of a member's extra field."""
    pos = 0
    while pos + 4 <= len(extra):
        kind, length = struct.unpack_from("<2H", extra, pos)
        if kind == 1:
            if length < 8 * count or pos + 4 + 8 * count > len(extra):
                return None
            return list(struct.unpack_from(f"<{count}Q", extra, pos + 4))
        pos += 4 + length
    return None


def _names(raw: np.ndarray, at: np.ndarray, lengths: np.ndarray, flags: np.ndarray) -> list[str] | None:
    """The names: their bytes gathered and decoded at once, then cut (not a decode per name).
    ASCII, or UTF-8 with the UTF-8 flag (what torch writes; torch reads every name as UTF-8)."""
    ends = np.cumsum(lengths)
    total = int(ends[-1])
    # byte j of the blob comes from its name's start plus its place in that name
    blob = raw[np.repeat(at - (ends - lengths), lengths) + np.arange(total, dtype=np.int64)].tobytes()
    cuts = [0, *ends.tolist()]
    if blob.isascii():
        return list(map(blob.decode("ascii").__getitem__, map(slice, cuts[:-1], cuts[1:])))
    if not (flags & 0x0800).all():
        return None
    try:
        return [blob[a:b].decode("utf-8") for a, b in zip(cuts[:-1], cuts[1:])]
    except UnicodeDecodeError:
        return None


def read_member(f: BinaryIO, member: Member) -> bytes | None:
    """A member's bytes, checked against its local header (signature, name) and its CRC; None
    where they disagree."""
    f.seek(member.header_offset)
    header = f.read(LOCAL_HEADER.size)
    if len(header) != LOCAL_HEADER.size:
        return None
    sig, _, _, _, _, _, _, _, _, name_len, extra_len = LOCAL_HEADER.unpack(header)
    if sig != LOCAL_SIG or f.read(name_len) != member.name.encode():
        return None
    f.seek(extra_len, os.SEEK_CUR)
    data = f.read(member.size)
    return data if len(data) == member.size and zlib.crc32(data) == member.crc else None


class TorchRecords(NamedTuple):
    """Where a torch.save archive keeps its tensor data: record `<archive>/data/i` has its local
    header at `header_offsets[i]` and `sizes[i]` bytes (columns, not a dict of tuples: ~200 bytes
    a tensor less in every cached entry)."""

    archive: str  # the records' prefix, "<archive>/"
    byteorder: bytes | None  # the `byteorder` record; older torch versions wrote none
    header_offsets: np.ndarray
    sizes: np.ndarray


class ZipFacts(NamedTuple):
    """What the sniffers and the loader ask of a zip archive, from one read of its directory."""

    readable: bool  # False: not a zip, or its central directory is missing (truncated)
    has_pickle: bool  # a `data.pkl` record: a torch.save archive
    torchscript: bool  # a `constants.pkl` record: code, not a checkpoint
    pickle: bytes | None = None  # the `data.pkl` record
    records: TorchRecords | None = None  # None: an unusual archive


def _facts(names: list[str], pickled: bytes | None, records: TorchRecords | None = None) -> ZipFacts:
    def has(member: str) -> bool:  # a column at a time: thousands of names
        return member in names or any(map(str.endswith, names, repeat("/" + member)))

    return ZipFacts(True, has("data.pkl"), has("constants.pkl"), pickled, records)


@functools.lru_cache(maxsize=4)
def _record_table(count: int) -> dict[str, int]:
    """{"0": 0, …, str(count - 1): count - 1}, made once per record count (a run's checkpoints
    share theirs): each key is then one lookup, in its canonical spelling only ("07", "+7" miss)."""
    return {str(i): i for i in range(count)}


def record_numbers(keys: list[str], count: int) -> list[int] | None:
    """The record each key names among `count` records "0" … str(count - 1); None if one names none."""
    try:
        return list(map(_record_table(count).__getitem__, keys))
    except KeyError:
        return None


def _torch_facts(f: BinaryIO, directory: Directory) -> ZipFacts | None:
    """The facts of an archive torch.save wrote, records included; None for an unusual one."""
    names = directory.names
    pickle_at = next((i for i, n in enumerate(names) if n.endswith("data.pkl")), None)
    if pickle_at is None:
        return _facts(names, None)
    archive = names[pickle_at][: -len("data.pkl")]
    data = archive + "data/"
    is_data = list(map(str.startswith, names, repeat(data)))  # once per name: thousands of records
    rows = list(compress(range(len(names)), is_data))
    small = [i for i in compress(range(len(names)), map(operator.not_, is_data)) if i != pickle_at]
    # the records under `data` are in the archive's directory: the others are asked alone
    if archive.count("/") != 1 or not all(names[i].startswith(archive) for i in small):
        return None  # torch wants every record in the archive's one directory
    kinds = [names[i][len(archive) :] for i in small]
    count = len(rows)
    # each record's key, the name past "<archive>/data/" (map over C methods: thousands of names)
    keys = list(map(operator.getitem, map(names.__getitem__, rows), repeat(slice(len(data), None))))
    numbers = record_numbers(keys, count) if count <= NUMBERED_MAX else None
    if (
        numbers is None
        or len(set(numbers)) != count  # a record named twice
        or not _SMALL.issuperset(kinds)
        or len(set(kinds)) != len(kinds)
        or ("version" not in kinds and ".data/version" not in kinds)
    ):
        return None
    # torch reads (and checks) the small records, and would refuse the file for a damaged one
    contents = dict(zip(kinds, (read_member(f, directory.member(i)) for i in small)))
    pickled = read_member(f, directory.member(pickle_at))
    if pickled is None or None in contents.values():
        return None
    try:
        contents.get(".data/serialization_id", b"").decode("utf-8")
    except UnicodeDecodeError:
        return None
    order = np.array(numbers, dtype=np.int64)
    header_offsets, sizes = np.empty(count, dtype=np.int64), np.empty(count, dtype=np.int64)
    header_offsets[order] = directory.header_offsets[rows]
    sizes[order] = directory.sizes[rows]
    records = TorchRecords(archive, contents.get("byteorder"), header_offsets, sizes)
    return _facts(names, pickled, records)


def _read_facts(path: str) -> ZipFacts:
    try:
        with open(path, "rb") as f:
            directory = read_directory(f)
            facts = None if directory is None else _torch_facts(f, directory)
        if facts is not None:
            return facts
    except OSError:
        pass  # zipfile below says what is wrong
    # An unusual archive: zipfile reads its names for the sniffers (and its pickle for
    # Lightning's), no records. zipfile on a corrupt archive raises more than BadZipFile
    # (EOFError, NotImplementedError, UnicodeDecodeError, zlib.error, struct.error…): each means
    # that part of the archive is unreadable, and torch.load then says so in one line.
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            pickle_name = next((n for n in names if n.endswith("data.pkl")), None)
            try:
                pickled = zf.read(pickle_name) if pickle_name else None
            except Exception:  # noqa: BLE001 - a damaged record: the sniffers still see the names
                pickled = None
    except Exception:  # noqa: BLE001 - see above
        return ZipFacts(readable=False, has_pickle=False, torchscript=False)
    return _facts(names, pickled)


def _cost(facts: ZipFacts) -> int:
    """The bytes a cached entry holds: its pickle and its record columns (names are not kept)."""
    records = facts.records
    held = 0 if records is None else records.header_offsets.nbytes + records.sizes.nbytes
    return _ENTRY_OVERHEAD + len(facts.pickle or b"") + held


class _FactsCache:
    """The facts of the files read most recently, bounded by the bytes they hold.

    Opening a directory of torch files asks each file the same questions in two passes over
    the run (the layouts' sniffers, one after another; then the reader, which sniffs and reads
    each file in turn), and parsing a zip directory of thousands of tensors is not free. A cache
    bounded by a count smaller than the run (a run of 100 epochs) is emptied by the first pass
    before the second comes back; bounded by bytes, it keeps a whole run of small checkpoints
    and tens of large ones. The key holds the file's identity, size and mtime, so a rewritten
    file is read again.
    """

    def __init__(self, read: Callable[[str], ZipFacts], budget_bytes: int) -> None:
        self._read = read
        self._budget = budget_bytes
        self._entries: OrderedDict[tuple[str, tuple[int, ...]], tuple[ZipFacts, int]] = OrderedDict()
        self._held = 0
        # the engine's reader threads and a Dask worker's task threads ask at once; a file is
        # parsed outside the lock (two threads may both parse one: the same facts)
        self._lock = threading.Lock()

    def __call__(self, path: str, identity: tuple[int, ...]) -> ZipFacts:
        key = (path, identity)
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found[0]
        facts = self._read(path)
        cost = _cost(facts)
        with self._lock:
            if key not in self._entries:
                self._entries[key] = (facts, cost)
                self._held += cost
            while self._held > self._budget and len(self._entries) > 1:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._held -= dropped
        return facts

    def cache_clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._held = 0


# A `data.pkl` holds about 110 bytes a tensor and the record columns 16: 64 MiB keeps ~530k
# tensors' facts (a checkpoint of 8.4k tensors holds 1 MB, the 61 of the SGD sample run 230 KB,
# the 24 of 17k tensors of the benchmark's 8.5k run 50 MB), little beside the engine's buckets
_FACTS_BUDGET = 64 << 20
_ENTRY_OVERHEAD = 512
_zip_facts = _FactsCache(_read_facts, _FACTS_BUDGET)


def zip_facts(path: str) -> ZipFacts:
    """What `path`'s zip directory says (cached by file identity, size and mtime)."""
    try:
        st = os.stat(path)
    except OSError:
        return ZipFacts(readable=False, has_pickle=False, torchscript=False)
    return _zip_facts(path, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))


# an end record sits in an archive's last 22 bytes, before a comment of at most 65,535
_END_TAIL = _END.size + 65_535


def zip_end_missing(path: str) -> bool:
    """True where a file that starts as a zip archive has no end record in its tail: the end of
    the file, with the archive's directory, is missing (a copy or a save cut short)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - _END_TAIL))
            return b"PK\x05\x06" not in f.read()
    except OSError:
        return False
