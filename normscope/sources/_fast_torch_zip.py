"""Opening a `torch.save` zip without torch's pure-Python unpickler: the same object, ~10x sooner.

`torch.load(weights_only=True)` interprets `data.pkl` one opcode at a time in Python: about a
second for a ResNet-sized checkpoint of 8.4k tensors, while its data is mapped lazily anyway. Here the C `pickle.Unpickler` runs the same pickle, and the tensors are built the
way `torch.load(path, weights_only=True, mmap=True, map_location="cpu")` builds them: one private
(MAP_PRIVATE, copy-on-write) mapping of the whole file, one storage slice per `data/<key>` record,
`set_` on it with the pickled offset, size and stride. Tensors naming the same key share a storage.
Figures against torch.load: docs/benchmarks.md, "Behind the design".

`_scan_torch_zip` goes one step further for the engine: the same archive checks, allow-list and
unpickle, with refs that point into the mapping in place of the tensors the engine reduces. That
path needs no torch: the file is mapped with `mmap` and read with numpy, its dtypes are `DType`
tokens, and torch is imported (`_torch`) only to build a tensor the engine cannot read in place.

Security: the "Restricting Globals" pattern of the `pickle` docs. A pickle can only call what
`find_class` hands it, and here that is a closed allow-list of small functions defined below
(rebuild a tensor from a storage of *this* archive, a Parameter, an OrderedDict/Counter/set from
plain data, bytes from latin-1 text, a torch.Size/device/layout from its name) plus dtype objects
and inert storage-type tokens. No real class or function of any other module is ever returned,
so a `__reduce__` naming `os.system` or `builtins.open` stops the load before anything runs; the
stubs check their arguments' types and build nothing but tensors over the archive's own records
(mapped storages are not resizable, so `set_` refuses sizes and strides past a record's end).
The stubs and the storage-type tokens are made fresh for each load: a pickle that BUILDs
attributes onto one cannot change the next load. `persistent_load` resolves only `("storage", <token>, key, location, numel)` ids.

Anything unexpected — another global, a protocol other than torch's 2, a compressed or
out-of-bounds record, big-endian data, Parameters with extra state, tensor metadata — raises
`Declined` (and any other error counts the same): the caller then runs `torch.load` itself, so
refusals and error messages stay torch's, and torch alone decides about every file not read here.

Damaged files: the zip checks here and in `_zipdir`/`_torchio` mirror what torch's reader
(miniz) refuses — encryption and other unsupported flags, other disks, sizes that disagree,
records past the end, damaged small records (`version`, `.format_version`, the serialization id),
members outside the archive's directory, names that are not UTF-8 — so that a fuzzed file
(bytes changed at random) is read here only if torch.load reads the same bytes. In 6,000 fuzzed
files, 3 were read here that torch refused: damage in zip fields that leave every tensor record
where the directory says (parsed by miniz, ignored here). The fuzz test in
tests/test_sources_bad_input.py holds the rest.
"""

from __future__ import annotations

import copyreg
import functools
import io
import mmap
import operator
import os
import pickle
import sys
import types
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from normscope._gc import collector_paused
from normscope._torch_seen import imported_torch

from ._torch_archive import TorchRecords, record_numbers, zip_facts
from ._zipdir import LOCAL_HEADER, LOCAL_SIG, STORED, le_field

if TYPE_CHECKING:  # pragma: no cover
    import torch

_TORCH_PROTOCOL = b"\x80\x02"  # torch.save's default pickle protocol, the one torch.load reads


def _torch() -> Any:
    """The torch module, imported on first use."""
    # here, not at the top: a file whose tensors are all read in place needs no torch (~1.4 s)
    import torch

    return torch


def _slice(storage: torch.UntypedStorage, at: slice) -> torch.UntypedStorage:
    # `storage[a:b]` without UntypedStorage.__getitem__'s Python wrapper (it only refuses meta
    # storages; ours is a CPU mapping), at well under half the cost per slice
    return _torch()._C.StorageBase.__getitem__(storage, at)


class DType(NamedTuple):
    """A torch dtype as `_scan_torch_zip` knows it without torch: its name and item size.
    Immutable (a BUILD cannot change it), so one token per dtype serves every load; it prints
    as torch's does (`torch.float32`)."""

    name: str
    itemsize: int

    def __str__(self) -> str:
        return f"torch.{self.name}"

    __repr__ = __str__


# torch's dtypes as the pickles of torch.save name them (aliases included), and its legacy
# storage types; tests/test_startup_imports.py checks them against torch. A name missing here
# (a dtype of a newer torch) makes the scan decline, and the file goes to the readers with torch.
_DTYPE_SIZES = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float8_e5m2": 1, "float8_e4m3fn": 1,
    "float8_e5m2fnuz": 1, "float8_e4m3fnuz": 1, "complex32": 4, "complex64": 8, "complex128": 16,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint64": 8, "uint32": 4, "uint16": 2,
    "uint8": 1, "bool": 1,
}  # fmt: skip
_DTYPE_ALIASES = {"double": "float64", "float": "float32", "half": "float16", "long": "int64",
                  "int": "int32", "short": "int16", "chalf": "complex32", "cfloat": "complex64",
                  "cdouble": "complex128"}  # fmt: skip
_STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "ComplexDoubleStorage": "complex128", "ComplexFloatStorage": "complex64",
}  # fmt: skip
DTYPES = {name: DType(name, size) for name, size in _DTYPE_SIZES.items()}
# what a tensor the kernel does not read in place becomes without torch: a numpy array of the
# same values (dtypes numpy has)
_NUMPY_DTYPES = {"float64": "<f8", "float32": "<f4", "float16": "<f2", "int64": "<i8", "int32": "<i4", "int16": "<i2", "int8": "i1", "uint64": "<u8",
                 "uint32": "<u4", "uint16": "<u2", "uint8": "u1", "bool": "?"}  # fmt: skip


class Declined(Exception):
    """Not a file this path reads the way torch.load would: let torch.load decide."""


class StorageType:
    """The token `find_class` gives for `torch.FloatStorage` & co: a dtype, nothing callable."""

    __slots__ = ("dtype", "itemsize")

    def __init__(self, dtype: torch.dtype | DType) -> None:
        self.dtype = dtype
        self.itemsize = dtype.itemsize


class _Storage:
    """What `persistent_load` returns: one record's bytes (a slice of the mapping) and its dtype."""

    __slots__ = ("dtype", "untyped")

    def __init__(self, untyped: torch.UntypedStorage, dtype: torch.dtype) -> None:
        self.untyped = untyped
        self.dtype = dtype


@functools.cache
def _constant_names() -> tuple[dict[tuple[str, str], torch.dtype], dict[tuple[str, str], torch.dtype]]:
    """(globals that are dtypes, globals that are storage types → their dtype): torch's legacy
    storage names, and `UntypedStorage` for dtypes without one (pickled as bytes)."""
    torch = _torch()
    dtypes = {
        ("torch", name): value for name, value in vars(torch).items() if isinstance(value, torch.dtype)
    }
    storages = {
        ("torch", name): dtype for dtype, name in torch.storage._dtype_to_storage_type_map().items()
    }
    storages[("torch.storage", "UntypedStorage")] = torch.uint8
    return dtypes, storages


def constants() -> dict[tuple[str, str], object]:
    """Globals that are plain values: dtypes, and storage-type tokens. The tokens are made anew
    for each load: a pickle can BUILD attributes onto what `find_class` gave it, and a token
    shared between loads would carry that into the next file."""
    dtypes, storages = _constant_names()
    return {**dtypes, **{key: StorageType(dtype) for key, dtype in storages.items()}}


def scan_constants() -> dict[tuple[str, str], object]:
    """`constants()` where torch is imported; without torch, `DType` tokens for the dtypes and
    storage-type tokens over them (a dtype pickled as a value then makes the scan decline: that
    value is torch's to build)."""
    if imported_torch() is not None:
        return constants()
    dtypes = {("torch", name): DTYPES[_DTYPE_ALIASES.get(name, name)]
              for name in (*DTYPES, *_DTYPE_ALIASES)}  # fmt: skip
    storages = {("torch", name): StorageType(DTYPES[dtype]) for name, dtype in _STORAGE_DTYPES.items()}
    storages[("torch.storage", "UntypedStorage")] = StorageType(DTYPES["uint8"])
    return {**dtypes, **storages}


def is_dtype(value: Any) -> bool:
    """A dtype `scan_constants()` gives: a `DType` token, or torch's own where torch is imported."""
    if type(value) is DType:
        return True
    torch = imported_torch()
    return torch is not None and type(value) is torch.dtype


_EMPTY: dict[torch.dtype, torch.Tensor] = {}  # per dtype, to make new tensors from cheaply


def _new_tensor(storage: Any, dtype: Any, offset: Any, size: Any, stride: Any,
                requires_grad: Any, hooks: Any, metadata: Any) -> torch.Tensor:  # fmt: skip
    """`torch._utils._rebuild_tensor_v2/v3`: a tensor over a storage from this archive."""
    torch = _torch()
    if (
        type(storage) is not _Storage
        or type(dtype) is not torch.dtype
        or type(requires_grad) is not bool
        or not (hooks is None or (type(hooks) is OrderedDict and not hooks))
        or metadata  # conj/neg bits: rare, left to torch
    ):
        raise Declined("tensor arguments torch.save does not write")
    return tensor_over(storage.untyped, dtype, offset, size, stride, requires_grad, hooks)


def tensor_over(untyped: torch.UntypedStorage | RecordBytes, dtype: torch.dtype | DType, offset: Any,
                size: Any, stride: Any, requires_grad: bool, hooks: Any) -> Any:  # fmt: skip
    """The tensor over `untyped` (a storage, or a record's `RecordBytes`) that torch.load builds.
    Without torch imported, a record's tensor of a dtype numpy has comes back as a numpy array of
    its values (`RecordBytes.array`): a BatchNorm's `num_batches_tracked`, an optimizer's `step`
    are read as numbers, and the few that must become tensors (`torch_files.as_ref`) are then."""
    if type(untyped) is RecordBytes:
        if type(dtype) is DType and not requires_grad and imported_torch() is None:
            array = untyped.array(dtype, offset, size, stride)
            if array is not None:
                return array
        untyped = untyped.storage()
    torch = _torch()
    if type(dtype) is DType:
        dtype = getattr(torch, dtype.name)
    empty = _EMPTY.get(dtype)
    if empty is None:
        empty = _EMPTY[dtype] = torch.empty(0, dtype=dtype)
    # set_ type-checks offset/size/stride; the storage is a non-resizable slice of the mapping,
    # so anything reaching past the record raises instead of reading beyond it
    tensor = empty.new_empty(0).set_(untyped, offset, size, stride)
    if requires_grad:
        tensor.requires_grad = True
    tensor._backward_hooks = hooks  # as torch's rebuild does (an empty OrderedDict)
    return tensor


def stubs() -> dict[tuple[str, str], Callable[..., Any]]:
    """The callables a pickle may reach, made fresh per load (see the module docstring)."""

    def rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any,
                          requires_grad: Any, hooks: Any, metadata: Any = None) -> torch.Tensor:  # fmt: skip
        dtype = storage.dtype if type(storage) is _Storage else None
        return _new_tensor(storage, dtype, offset, size, stride, requires_grad, hooks, metadata)

    def rebuild_tensor_v3(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any,
                          hooks: Any, dtype: Any, metadata: Any = None) -> torch.Tensor:  # fmt: skip
        return _new_tensor(storage, dtype, offset, size, stride, requires_grad, hooks, metadata)

    def rebuild_parameter(data: Any, requires_grad: Any, hooks: Any) -> torch.nn.Parameter:
        torch = _torch()
        if type(data) is not torch.Tensor or type(requires_grad) is not bool or hooks:
            raise Declined("parameter arguments torch.save does not write")
        param = torch.nn.Parameter(data, requires_grad)
        param._backward_hooks = hooks  # as torch._utils._rebuild_parameter does
        return param

    def ordered_dict() -> OrderedDict[Any, Any]:  # OrderedDict.__reduce__ passes no arguments
        return OrderedDict()

    def counter(counts: Any = None) -> Counter[Any]:  # Counter.__reduce__ passes a dict
        if counts is not None and type(counts) is not dict:
            raise Declined("Counter of something other than a dict")
        return Counter(counts or {})

    def make_set(items: Any) -> set[Any]:  # protocol 2 pickles a set as set([items])
        if type(items) is not list:
            raise Declined("set of something other than a list")
        return set(items)

    def encode(text: Any, encoding: Any) -> bytes:  # protocol 2 pickles bytes as latin-1 text
        if type(text) is not str or encoding not in ("latin1", "latin-1"):
            raise Declined("_codecs.encode other than latin-1 text")
        return text.encode("latin1")

    def size(dims: Any) -> torch.Size:
        if type(dims) is not tuple or any(type(d) is not int for d in dims):
            raise Declined("torch.Size of something other than ints")
        return _torch().Size(dims)

    def device(kind: Any, index: Any = None) -> torch.device:
        if type(kind) is not str or not (index is None or type(index) is int):
            raise Declined("torch.device of something other than a name and an index")
        torch = _torch()
        return torch.device(kind) if index is None else torch.device(kind, index)

    def get_layout(name: Any) -> torch.layout:
        if type(name) is not str:
            raise Declined("layout of something other than a name")
        return _torch().serialization._get_layout(name)

    return {
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
        ("collections", "OrderedDict"): ordered_dict,
        ("collections", "Counter"): counter,
        ("__builtin__", "set"): make_set,  # protocol 2's spelling of builtins
        ("builtins", "set"): make_set,
        ("_codecs", "encode"): encode,
        ("torch", "Size"): size,
        ("torch", "device"): device,
        ("torch.serialization", "_get_layout"): get_layout,
    }


ITEMSIZE_OF = operator.attrgetter("itemsize")  # of storage types


class Records:
    """The archive's `data/<key>` records as slices of one private mapping of the file."""

    def __init__(self, path: str, records: TorchRecords, size: int) -> None:
        self.path = path
        self._sizes = records.sizes
        self._size = size
        # What torch.load(mmap=True) maps: the whole file, MAP_PRIVATE (ACCESS_COPY: writes to a
        # tensor stay in this process, never reach the file), pages read only when touched.
        with open(path, "rb") as f:
            self._mapping = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
        # The local headers are read through that same mapping: each sits just before its
        # record's bytes, on a page the engine maps anyway. A mapping of their own cost a fault
        # per header and an unmap.
        whole = np.frombuffer(self._mapping, dtype=np.uint8)
        self._bytes = whole
        self._base = whole.ctypes.data
        self._storage: torch.UntypedStorage | None = None  # the mapping as torch sees it, once asked
        self._np_starts = self._data_starts(records, whole)
        self._np_sizes = np.frombuffer(records.sizes, dtype=np.int64)
        self._starts = self._np_starts.tolist()

    def _data_starts(self, records: TorchRecords, data: np.ndarray) -> np.ndarray:
        """Where each record's bytes begin, from its local header; -1 where the record is not
        plain (stored) or its local header disagrees with the central directory (signature,
        method, name) or its bytes would run past the end of the file.

        All headers at once with numpy rather than one Python call per record: a 1 GB
        ResNet-shaped run has 34k records."""

        count = len(records.sizes)
        starts = np.full(count, -1, dtype=np.int64)
        offsets = np.frombuffer(records.header_offsets, dtype=np.int64)
        sizes = np.frombuffer(records.sizes, dtype=np.int64)
        prefix = f"{records.archive}data/".encode()
        index = np.arange(count, dtype=np.int64)
        digits = 1 + sum((index >= 10**k).astype(np.int64) for k in range(1, 19))
        name_at = offsets + LOCAL_HEADER.size
        # the header and the name it should hold lie inside the file
        keep = (offsets >= 0) & (name_at + len(prefix) + digits <= self._size)
        index, at, name_at, digits = index[keep], offsets[keep], name_at[keep], digits[keep]

        def field(offset: int, size: int) -> np.ndarray:  # of each header
            return le_field(data, at + offset, size)

        name_len = field(26, 2)
        first = name_at + name_len + field(28, 2)
        # each term at most the file's size before they are added: no int64 sum can wrap
        record_sizes = sizes[index]
        ok = (
            (field(0, 4) == int.from_bytes(LOCAL_SIG, "little"))
            & (field(8, 2) == STORED)
            & (name_len == len(prefix) + digits)
            & (record_sizes >= 0)
            & (record_sizes <= self._size)
            & (first + record_sizes <= self._size)
        )
        for k, byte in enumerate(prefix):  # "<archive>/data/" ...
            ok &= data[name_at + k] == byte
        for d in range(int(digits.max(initial=0))):  # ... then the decimal digits of i
            has = digits > d
            place = 10 ** np.maximum(digits - 1 - d, 0)
            digit = data[np.where(has, name_at + len(prefix) + d, 0)]
            ok &= ~has | (digit == (index // place) % 10 + ord("0"))
        starts[index[ok]] = first[ok]
        return starts

    @property
    def size(self) -> int:
        """The bytes mapped: the whole file as it was when it was opened."""
        return self._size

    @property
    def base(self) -> int:
        """The address of the file's first byte in the mapping."""
        return self._base

    def _whole(self) -> torch.UntypedStorage:
        """The whole mapping as one torch storage (non-resizable: `set_` refuses a tensor past a
        record's end), made the first time a tensor is built."""
        if self._storage is None:
            self._storage = _torch().frombuffer(self._mapping, dtype=_torch().uint8).untyped_storage()
        return self._storage

    def index(self, key: str, nbytes: int) -> int:
        """The record `data/<key>`, checked: stored plain, where its local header says, and
        `nbytes` long (what its storage id says it holds)."""
        found = record_numbers([key], len(self._starts))
        if found is None:
            raise Declined(f"no record data/{key}")
        index = found[0]
        if self._starts[index] < 0:
            raise Declined(f"data/{key} is not a stored record that matches its local header")
        if self._sizes[index] != nbytes:
            raise Declined(f"data/{key} is not the size its tensor needs")
        return index

    def indices(self, keys: list[str], nbytes: list[int]) -> list[int]:
        """`index()` for many keys, a column at a time."""
        found = record_numbers(keys, len(self._starts))
        if found is None:
            raise Declined("a storage key that names no record")
        at = np.array(found, dtype=np.int64)
        if np.any(self._np_starts[at] < 0):
            raise Declined("a record that is not stored where its local header says")
        if np.any(self._np_sizes[at] != np.array(nbytes, dtype=np.int64)):
            raise Declined("a record of another size than its storage needs")
        return found

    def extents(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Where records `indices` (checked by `indices()`) begin in the file, and their sizes."""
        at = np.array(indices, dtype=np.int64)
        return self._np_starts[at], self._np_sizes[at]

    def get(self, key: str, nbytes: int) -> RecordBytes:
        """The `nbytes` of record `data/<key>` (checked by `index()`), not yet a torch storage."""
        return RecordBytes(self, self._starts[self.index(key, nbytes)], nbytes)

    def storage(self, start: int, nbytes: int) -> torch.UntypedStorage:
        """`nbytes` from `start` as a slice of the mapping's storage."""
        return _slice(self._whole(), slice(start, start + nbytes))

    def array(self, start: int, nbytes: int) -> np.ndarray:
        """`nbytes` from `start` as uint8 over the mapping, no copy."""
        return self._bytes[start : start + nbytes]

    def tensor(self, record: int, dtype: str, offset: int, shape: tuple[int, ...],
               stride: tuple[int, ...]) -> torch.Tensor:  # fmt: skip
        """The tensor of a `MappedTensorRef` (record checked by `index()` when it was made)."""
        untyped = self.storage(self._starts[record], self._sizes[record])
        return tensor_over(untyped, getattr(_torch(), dtype), offset, shape, stride, False, None)


class RecordBytes(NamedTuple):
    """A record's bytes in the mapping, before anything is built over them (`Records.get`)."""

    records: Records
    start: int
    nbytes: int

    def storage(self) -> torch.UntypedStorage:
        return self.records.storage(self.start, self.nbytes)

    def array(self, dtype: DType, offset: Any, size: Any, stride: Any) -> np.ndarray | None:
        """The tensor `(offset, size, stride)` of `dtype` over these bytes as a numpy array (the
        mapping's, no copy); None where numpy does not hold that dtype, the arguments are not
        what torch.save writes, or an element would lie past the record (torch's `set_` refuses
        those too, and decides the message)."""
        kind = _NUMPY_DTYPES.get(dtype.name)
        if (
            kind is None
            or type(offset) is not int
            or type(size) is not tuple
            or type(stride) is not tuple
            or len(size) != len(stride)
            or not all(type(n) is int and n >= 0 for n in (offset, *size, *stride))
        ):
            return None
        itemsize = dtype.itemsize
        count = 1
        for n in size:
            count *= n
        # the last element's index plus one (exact: Python ints); an empty tensor reaches nothing
        reach = 0 if count == 0 else offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
        if reach * itemsize > self.nbytes:
            return None
        data = self.records.array(self.start, self.nbytes)
        start = offset * itemsize if count else 0
        base = data[start : start + max(reach - offset, 0) * itemsize].view(kind)
        return np.lib.stride_tricks.as_strided(
            base, shape=size, strides=tuple(s * itemsize for s in stride), writeable=True
        )


class RestrictedUnpickler(pickle.Unpickler):
    """The C unpickler, reaching only `globals_` (see the module docstring)."""

    def __init__(self, pickled: bytes, globals_: dict[tuple[str, str], object]) -> None:
        # BufferedReader: the C unpickler prefetches through `peek` instead of a call per opcode
        super().__init__(io.BufferedReader(io.BytesIO(pickled)), encoding="utf-8")
        self._globals = globals_

    def find_class(self, module: str, name: str) -> Any:
        found = self._globals.get((module, name))
        if found is None:
            raise Declined(f"global {module}.{name}")
        return found


class _TensorUnpickler(RestrictedUnpickler):
    """Builds the tensors as it goes, as torch.load does."""

    def __init__(self, pickled: bytes, records: Records) -> None:
        super().__init__(pickled, {**constants(), **stubs()})
        self._get = records.get  # bound once: called for every storage
        self._storages: dict[str, _Storage] = {}

    def persistent_load(self, pid: Any) -> _Storage:
        if type(pid) is not tuple or len(pid) != 5 or pid[0] != "storage":
            raise Declined("a persistent id other than a storage")
        _, storage_type, key, location, numel = pid
        if (
            type(storage_type) is not StorageType
            or type(key) is not str
            or type(location) is not str  # ignored: everything is mapped to the CPU
            or type(numel) is not int
            or numel < 0
        ):
            raise Declined("a storage id torch.save does not write")
        # as torch.load: the first id naming a key fixes its dtype; later ones share it
        storage = self._storages.get(key)
        if storage is None:
            nbytes = numel * storage_type.itemsize
            storage = _Storage(self._get(key, nbytes).storage(), storage_type.dtype)
            if nbytes:  # torch.load does not share empty storages either
                self._storages[key] = storage
        return storage


_CONTAINERS = frozenset({dict, OrderedDict, Counter, list, tuple, set, frozenset})
# no real function is reachable; a dtype pickled as a value is torch's to build (scan: a DType)
_PRIVATE = (_Storage, StorageType, DType, types.FunctionType)


def _check_environment(byteorder: bytes | None) -> None:
    """Settings under which torch.load would build something else than what we build."""
    if sys.byteorder != "little":
        raise Declined("big-endian machine")
    if byteorder is not None and byteorder != b"little":
        raise Declined("big-endian checkpoint")
    # torch.load's settings: where torch is not imported, nothing has changed them from their defaults
    torch = imported_torch()
    if torch is not None:
        if byteorder is None:  # old files: torch assumes little unless told otherwise
            endianness = torch.serialization.get_default_load_endianness()
            if endianness not in (None, torch.serialization.LoadEndianness.LITTLE):
                raise Declined("a non-default load endianness is set")
        if torch.serialization.get_default_mmap_options() != mmap.MAP_PRIVATE:
            raise Declined("torch.load is set to map files shared")
    # EXT opcodes resolve through copyreg's registry, and its cache bypasses find_class
    if copyreg._inverted_registry:  # type: ignore[attr-defined]
        raise Declined("copyreg extensions are registered")


def open_archive(path: str) -> tuple[bytes, Records]:
    """The pickle and the records of a torch.save zip this module reads; Declined otherwise."""
    facts = zip_facts(path)
    if facts.pickle is None or facts.records is None:
        raise Declined("not a torch.save zip with numbered records")
    if not facts.pickle.startswith(_TORCH_PROTOCOL):
        raise Declined("pickle protocol other than torch's 2")
    _check_environment(facts.records.byteorder)
    size = os.path.getsize(path)
    if size == 0:  # nothing to map; zip_facts said otherwise, so the file changed under us
        raise Declined("an empty file")
    return facts.pickle, Records(path, facts.records, size)


def load_torch_zip_fast(path: str) -> Any:
    """What `torch.load(path, weights_only=True, mmap=True, map_location="cpu")` returns, or
    `Declined` (or another exception) when this file is for torch.load to read."""
    pickled, records = open_archive(path)
    # Thousands of new containers trigger full collections that walk everything alive: half
    # the time of a load, measured. An unpickle makes no garbage cycles worth collecting.
    with collector_paused():
        result = _TensorUnpickler(pickled, records).load()
        record_places(result)  # checks it holds none of our own objects
        return result


def record_places(result: Any, record: type | None = None) -> list[tuple[Any, list[Any]]]:
    """(container, keys) of every instance of `record` in the result: dict values only (state
    dicts and optimizer states keep tensors there); Declined for one elsewhere. Declined too for a result
    holding our own objects — a storage or storage type pickled on its own (torch.load gives a
    torch storage there), a stub — which is all the check the eager loader needs. Containers
    (and the attributes a BUILD gave a dict, like a state_dict's `_metadata`) are walked once."""
    places: list[tuple[Any, list[Any]]] = []
    stack, seen = [result], set()
    while stack:
        value = stack.pop()
        kind = type(value)
        if kind in _CONTAINERS:
            if id(value) in seen:
                continue
            seen.add(id(value))
            if kind is dict or kind is OrderedDict or kind is Counter:
                stack.extend(value.keys())
                keys = [key for key, item in value.items() if type(item) is record]
                if keys:
                    places.append((value, keys))
                    stack.extend(item for item in value.values() if type(item) is not record)
                else:
                    stack.extend(value.values())
                attributes = getattr(value, "__dict__", None)
                if attributes:
                    stack.append(attributes)
            else:
                stack.extend(value)
        elif kind is record:
            raise Declined("a tensor outside a dict's values")
        elif isinstance(value, _PRIVATE):
            raise Declined(f"the checkpoint holds a bare {kind.__name__}")
    return places
