"""The archive layer of a `torch.save` zip: what its directory says, read once per file version.

The sniffers ask whether a file is a torch.save archive (or TorchScript), and the fast readers
(`_fast_torch_zip`, `_scan_torch_zip`) ask where each storage record lies. Both are answered
here from one read of the zip directory by `_zipdir`, cached by file identity, size and mtime.
Nothing here imports torch.
"""

from __future__ import annotations

import functools
import os
import zipfile
from array import array
from dataclasses import dataclass, field
from itertools import repeat
from typing import BinaryIO

from ._zipdir import Directory, read_directory, read_member

@dataclass(frozen=True)
class ZipFacts:
    """What the sniffers and the loader ask of a zip archive, from one read of its directory."""

    readable: bool  # False: not a zip, or its central directory is missing (truncated)
    has_pickle: bool  # a `data.pkl` record: a torch.save archive
    torchscript: bool  # a `constants.pkl` record: code, not a checkpoint
    pickle: bytes | None = field(default=None, repr=False)  # the `data.pkl` record
    records: TorchRecords | None = field(default=None, repr=False)  # for `_fast_torch_zip`


@dataclass(frozen=True)
class TorchRecords:
    """Where a torch.save archive keeps its tensor data, as its zip directory says.

    torch names storage records `<archive>/data/0` … `data/<n-1>`; record `data/i` has its local
    header at `header_offsets[i]` (-1: missing, compressed or encrypted) and `sizes[i]` bytes.
    Two flat arrays: a dict of tuples would cost ~200 bytes a tensor in every cached entry.
    """

    archive: str  # the records' prefix, "<archive>/"
    byteorder: bytes | None  # the `byteorder` record; older torch versions wrote none
    header_offsets: array[int]
    sizes: array[int]


# Sniffing a directory of torch files asks each file the same questions several times (one
# layout after another, then the loader), and parsing a zip directory of thousands of tensors is
# not free. The key holds the file's identity, size and mtime, so a rewritten file is read again.
@functools.lru_cache(maxsize=32)
def _zip_facts(path: str, identity: tuple[int, int, int, int]) -> ZipFacts:
    try:
        with open(path, "rb") as f:
            directory = read_directory(f)
            facts = None if directory is None else _facts_from_directory(f, directory)
        if facts is not None:
            return facts
    except OSError:
        pass  # zipfile below says what is wrong
    # An archive `_zipdir` does not read is read by zipfile for the sniffers, but without records:
    # the fast loader then declines it, and torch.load decides.
    # zipfile on a corrupt archive raises more than BadZipFile: EOFError from a short member,
    # NotImplementedError from a garbled version or method, UnicodeDecodeError from a name,
    # zlib.error, struct.error... Each means the same here: this part of the archive is unreadable
    # (torch.load then says so in one line).
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            pickle_name = next((n for n in names if n.endswith("data.pkl")), None)
            try:
                pickled = zf.read(pickle_name) if pickle_name else None
            # a corrupt record in a readable directory: the sniffers still see the names
            except Exception:  # noqa: BLE001 - see above
                pickled = None
    except Exception:  # noqa: BLE001 - see above
        return ZipFacts(readable=False, has_pickle=False, torchscript=False)
    return _facts(names, pickled, None)


def _facts(names: list[str], pickled: bytes | None, records: TorchRecords | None) -> ZipFacts:
    def has(member: str) -> bool:  # a column at a time: thousands of names
        return member in names or any(map(str.endswith, names, repeat("/" + member)))

    return ZipFacts(
        readable=True,
        has_pickle=has("data.pkl"),
        torchscript=has("constants.pkl"),
        pickle=pickled,
        records=records,
    )


def _facts_from_directory(f: BinaryIO, directory: Directory) -> ZipFacts | None:
    """`ZipFacts` from `_zipdir`'s reading; None where `zipfile` must decide (a member that is
    compressed, or whose bytes do not match the directory)."""
    names = directory.names
    pickle_at = next((i for i, n in enumerate(names) if n.endswith("data.pkl")), None)
    if pickle_at is None:
        return _facts(names, None, None)
    pickled = read_member(f, directory.member(pickle_at))
    if pickled is None:
        return None
    prefix = names[pickle_at].removesuffix("data.pkl")
    if prefix and not prefix.endswith("/"):
        return _facts(names, pickled, None)
    # the last of equal names, as a dict by name would keep
    byteorder_at = (
        len(names) - 1 - names[::-1].index(prefix + "byteorder")
        if prefix + "byteorder" in names
        else None
    )
    byteorder = None
    if byteorder_at is not None:
        byteorder = read_member(f, directory.member(byteorder_at))
        if byteorder is None:
            return None
    if not _small_records_as_torch_reads_them(f, directory, prefix, read={byteorder_at}):
        return _facts(names, pickled, None)  # the fast loader declines; torch.load decides
    return _facts(names, pickled, _records(prefix, byteorder, directory))


def _small_records_as_torch_reads_them(
    f: BinaryIO, directory: Directory, prefix: str, *, read: set[int | None]
) -> bool:
    """torch.load also reads the archive's small records (`version`, `.format_version`,
    `.storage_alignment`, the serialization id as UTF-8 text...) and refuses the file if one is
    missing or damaged. The fast loader reads only archives where each of them is whole (local
    header and CRC as the directory says), `version` exists and every member lies in the
    archive's directory, so it does not read a file torch would refuse for them. `read`: members
    the caller has checked already."""
    data = prefix + "data/"
    names = directory.names
    if not all(map(str.isascii, names)) and not _all_utf8(names, directory.flags):
        return False  # torch hands every record name to Python as UTF-8 text
    if not all(map(str.startswith, names, repeat(prefix))):
        return False  # torch wants every record in the archive's one directory
    found_version = prefix + "version" in names
    # whole columns first: a ResNet-shaped checkpoint has thousands of data/ records to pass over
    small = [i for i, name in enumerate(names) if not name.startswith(data)]
    for i in small:
        name = names[i]
        if name.endswith("data.pkl") or i in read:
            continue
        content = read_member(f, directory.member(i))
        if content is None:
            return False
        if name.endswith("serialization_id"):
            try:
                content.decode("utf-8")
            except UnicodeDecodeError:
                return False
    return found_version


def _all_utf8(names: list[str], flags: list[int]) -> bool:
    """Whether every name's bytes, as the archive stores them, are UTF-8 text."""
    try:
        for name, flag in zip(names, flags):
            if not flag & 0x800:  # decoded as cp437 by the reader: check the original bytes
                name.encode("cp437").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return False
    return True


NUMBERED_MAX = 1 << 18  # records; ~25 MB for the table of names


@functools.lru_cache(maxsize=4)
def _record_table(count: int) -> dict[str, int]:
    """{"0": 0, …, str(count - 1): count - 1}: the keys of an archive of `count` records. Made once
    per record count (a run's checkpoints share theirs) instead of converting each key both ways
    per tensor."""
    return {str(i): i for i in range(count)}


def record_numbers(keys: list[str], count: int) -> list[int] | None:
    """The record each key names among an archive's `count` records "0" … str(count - 1), in its
    canonical spelling only ("07", " 7", "+7", "7_0" name none); None if some key names none.
    Record names in the zip directory and storage keys in the pickle are both read this way."""
    if count <= NUMBERED_MAX:
        try:
            return list(map(_record_table(count).__getitem__, keys))
        except KeyError:
            return None
    # a table that large would cost more memory than converting each key costs time
    try:
        numbers = list(map(int, keys))
    except ValueError:
        return None
    if list(map(str, numbers)) != keys or not 0 <= min(numbers, default=0):
        return None
    return numbers if max(numbers, default=0) < count else None


def _records(archive: str, byteorder: bytes | None, directory: Directory) -> TorchRecords | None:
    """Record `data/<i>`'s local header offset and size, for i = 0…n-1 exactly: a column at a
    time (a loop over the members costs a Python step per tensor)."""
    import numpy as np

    prefix = archive + "data/"
    names = directory.names
    picked = [i for i, name in enumerate(names) if name.startswith(prefix)]
    keys = [names[i][len(prefix) :] for i in picked]
    count = len(picked)
    # the canonical names: "data/7" is record 7, "data/07" or "data/x" make the archive unusual
    numbers = record_numbers(keys, count)
    if numbers is None:
        return None
    index = np.array(numbers, dtype=np.int64)
    if count and np.bincount(index, minlength=count).max() > 1:  # a record named twice
        return None
    at = np.array(picked, dtype=np.int64)

    def column(values: list[int]) -> np.ndarray:
        return np.array(values, dtype=np.int64)[at]

    # torch writes records stored (uncompressed), never encrypted
    plain = (column(directory.methods) == zipfile.ZIP_STORED) & (column(directory.flags) & 0x1 == 0)
    header_offsets = np.full(count, -1, dtype=np.int64)
    header_offsets[index] = np.where(plain, column(directory.header_offsets), -1)
    sizes = np.zeros(count, dtype=np.int64)
    sizes[index] = column(directory.sizes)
    return TorchRecords(archive, byteorder, array("q", header_offsets.tobytes()),
                        array("q", sizes.tobytes()))  # fmt: skip


def zip_facts(path: str) -> ZipFacts:
    try:
        st = os.stat(path)
    except OSError:
        return ZipFacts(readable=False, has_pickle=False, torchscript=False)
    return _zip_facts(path, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
