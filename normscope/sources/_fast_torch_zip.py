"""Reading a `torch.save` zip without torch's pure-Python unpickler: the same object, ~10x sooner.

`torch.load(weights_only=True)` interprets `data.pkl` one opcode at a time in Python: about a
second for a ResNet-sized checkpoint of 8.4k tensors. Here the C unpickler (`_unpickle`) runs the
same pickle under one policy, whose rebuild stubs keep their arguments (`Rebuilt`); every tensor
is then checked a column at a time (`_resolve`: a Python call per tensor costs more than the
unpickle), and either built as `torch.load(path, weights_only=True, mmap=True,
map_location="cpu")` builds it (`load_torch_zip_fast`: one private, copy-on-write mapping of the
file, one storage slice per `data/<key>` record shared by the tensors naming it, `set_` on it with
the pickled offset, size and stride), or, for the engine (`scan_torch_zip`), left as a
`MappedTensorRef` where it is a contiguous float tensor of more than one element: the address of
its bytes in the mapping, checked in bounds, read in place by the CPU kernel. That path needs no
torch: the file is mapped with `mmap` and read with numpy, dtypes are `DType` tokens, and torch is
imported only to build a tensor the engine cannot read in place (docs/benchmarks.md, "Behind the
design"). The per-record and per-tensor loops have C versions (`_speedups`, `_torchzip.c`) that
read the common case and leave everything else to the Python code here, which decides.

Security: `find_class` hands a pickle only a closed table of small functions defined below
(record a tensor's arguments, an OrderedDict/Counter/set from plain data, bytes from latin-1
text, a torch.Size/device/layout from its name) plus dtypes and inert storage-type tokens, made
fresh for each load (a pickle that BUILDs attributes onto one cannot change the next load). No
real class or function of any other module is ever returned, so a `__reduce__` naming `os.system`
stops the load before anything runs. Tensors are built only over the archive's own records
(mapped storages are not resizable, so `set_` refuses sizes and strides past a record's end).

Anything unexpected — another global, a protocol other than torch's 2, an unusual archive
(`_zipdir`), a record whose local header or size disagrees, a tensor outside a dict or list,
big-endian data, Parameters with extra state, tensor metadata — raises `Declined` with its
`Reason`: the loader (`_torchio`) then runs `torch.load`, so torch alone decides about every file
not read here, and its refusals and messages stay torch's.
"""

from __future__ import annotations

import copyreg
import functools
import math
import mmap
import operator
import os
import sys
import threading
import types
from collections import Counter, OrderedDict
from collections.abc import Callable
from itertools import chain, repeat
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from normscope._gc import collector_paused
from normscope._torch_seen import imported_torch

from . import _speedups
from ._refs import MappedTensorRef, dtype_name
from ._unpickle import Declined, Policy, Reason, unpickle
from ._zipdir import LOCAL_HEADER, LOCAL_SIG, TorchRecords, le_field, record_numbers, zip_facts

if TYPE_CHECKING:  # pragma: no cover
    import torch

_TORCH_PROTOCOL = b"\x80\x02"  # torch.save's default pickle protocol, the one torch.load reads


def _torch() -> Any:
    """The torch module, imported on first use."""
    import torch  # lazy: a file whose tensors are all read in place needs no torch (~1.4 s)

    return torch


class DType(NamedTuple):
    """A torch dtype as the scan knows it without torch: its name and item size. Immutable (a
    BUILD cannot change it), so one token per dtype serves every load; it prints as torch's does."""

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
_NUMPY_DTYPES = {"float64": "<f8", "float32": "<f4", "float16": "<f2", "int64": "<i8", "int32": "<i4",
                 "int16": "<i2", "int8": "i1", "uint64": "<u8", "uint32": "<u4", "uint16": "<u2",
                 "uint8": "u1", "bool": "?"}  # fmt: skip


class StorageType:
    """The token `find_class` gives for `torch.FloatStorage` & co: a dtype, nothing callable."""

    __slots__ = ("dtype", "itemsize")

    def __init__(self, dtype: torch.dtype | DType) -> None:
        self.dtype = dtype
        self.itemsize = dtype.itemsize


def constants(*, torch_dtypes: bool) -> dict[tuple[str, str], object]:
    """Globals that are plain values: the dtypes of the tables above, and storage-type tokens over
    them, made anew for each load (a pickle can BUILD attributes onto what `find_class` gave it).

    Args:
        torch_dtypes: torch's own dtypes (imports torch); otherwise torch's where torch is
            imported, `DType` tokens where not (a dtype pickled as a value is then torch's to build).
    """
    torch = _torch() if torch_dtypes else imported_torch()
    found = {name: DTYPES[name] if torch is None else getattr(torch, name, None) for name in DTYPES}
    dtypes = {("torch", name): found[_DTYPE_ALIASES.get(name, name)] for name in (*DTYPES, *_DTYPE_ALIASES)}
    storages = {("torch", name): StorageType(found[dtype]) for name, dtype in _STORAGE_DTYPES.items()}
    storages[("torch.storage", "UntypedStorage")] = StorageType(found["uint8"])
    return {key: value for key, value in {**dtypes, **storages}.items() if value is not None}


def is_dtype(value: Any) -> bool:
    """A dtype `constants()` gives: a `DType` token, or torch's own where torch is imported."""
    if type(value) is DType:
        return True
    torch = imported_torch()
    return torch is not None and type(value) is torch.dtype


_EMPTY: dict[torch.dtype, torch.Tensor] = {}  # per dtype, to make new tensors from cheaply


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


def _arguments(ok: bool, what: str) -> None:
    if not ok:
        raise Declined(Reason.ARGUMENTS, what)


def stubs() -> dict[tuple[str, str], Callable[..., Any]]:
    """The callables every torch policy gives a pickle beside its rebuild stubs, made fresh per
    load (see the module docstring)."""

    def counter(counts: Any = None) -> Counter[Any]:  # Counter.__reduce__ passes a dict
        _arguments(counts is None or type(counts) is dict, "Counter of something other than a dict")
        return Counter(counts or {})

    def make_set(items: Any) -> set[Any]:  # protocol 2 pickles a set as set([items])
        _arguments(type(items) is list, "set of something other than a list")
        return set(items)

    def encode(text: Any, encoding: Any) -> bytes:  # protocol 2 pickles bytes as latin-1 text
        _arguments(type(text) is str and encoding in ("latin1", "latin-1"), "_codecs.encode")
        return text.encode("latin1")

    def size(dims: Any) -> torch.Size:
        _arguments(type(dims) is tuple and all(type(d) is int for d in dims), "torch.Size")
        return _torch().Size(dims)

    def device(kind: Any, index: Any = None) -> torch.device:
        _arguments(type(kind) is str and (index is None or type(index) is int), "torch.device")
        return _torch().device(kind) if index is None else _torch().device(kind, index)

    def get_layout(name: Any) -> torch.layout:
        _arguments(type(name) is str, "layout")
        return _torch().serialization._get_layout(name)

    return {
        # its __reduce__ passes nothing; the bound `copy` of an empty one the pickle never sees
        # makes a new empty OrderedDict per call without a Python frame (a tensor's hooks), and
        # takes no arguments, as the call it stands for
        ("collections", "OrderedDict"): OrderedDict().copy,
        ("collections", "Counter"): counter,
        ("__builtin__", "set"): make_set,  # protocol 2's spelling of builtins
        ("builtins", "set"): make_set,
        ("_codecs", "encode"): encode,
        ("torch", "Size"): size,
        ("torch", "device"): device,
        ("torch.serialization", "_get_layout"): get_layout,
    }


def _background_worth(offsets: np.ndarray) -> bool:
    """Whether finding these records' starts on a thread pays: with the C loop (which releases
    the GIL), and for enough records that a thread's start (~0.1 ms) is small beside it."""
    return _speedups.torchzip is not None and len(offsets) >= 512


def _in_background(work: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    """`work(*args)` started on a thread; the call returned waits for it and gives its result
    (or raises what it raised)."""
    outcome: list[Any] = []
    ready = threading.Event()

    def run() -> None:
        try:
            outcome.append((True, work(*args)))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome.append((False, exc))
        ready.set()

    thread = threading.Thread(target=run, name="normscope-headers", daemon=True)
    thread.start()

    def result() -> Any:
        ready.wait()
        done, value = outcome[0]
        if not done:
            raise value
        return value

    return result


class Records:
    """The archive's `data/<i>` records as slices of one private mapping of the file: the path,
    `base` and `tensor()` a `MappedTensorRef` builds its tensor with."""

    def __init__(self, path: str, records: TorchRecords, size: int) -> None:
        self.path = path
        self.size = size  # the bytes mapped: the whole file as it was when it was opened
        # What torch.load(mmap=True) maps: the whole file, MAP_PRIVATE (ACCESS_COPY: writes to a
        # tensor stay in this process, never reach the file), pages read only when touched.
        with open(path, "rb") as f:
            self._mapping = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
        # The local headers are read through that same mapping: each sits just before its
        # record's bytes, on a page the engine maps anyway.
        self.bytes = np.frombuffer(self._mapping, dtype=np.uint8)  # the file, as mapped
        self.base = self.bytes.ctypes.data  # the address of the file's first byte in the mapping
        self._storage: torch.UntypedStorage | None = None  # the mapping as torch sees it, once asked
        # int64, contiguous: the C loop (`_speedups`) reads the records' extents from both
        self._np_sizes = np.ascontiguousarray(records.sizes, dtype=np.int64)
        self._sizes = records.sizes.tolist()
        # Reading the headers maps most of the file's pages (a page fault per 64 KiB or so, a
        # third of the open of a file of small tensors): the C loop does it on a thread of its
        # own while this one unpickles, and the records' starts are waited for when first asked.
        # The other pages fault as the kernel reads them: mapping them all on that thread
        # (`madvise(MADV_POPULATE_READ)`) took 20-50 ms a 250 MB file on one of the benchmark's
        # VMs, against ~4 ms of faults in the kernel (docs/engine.md, "Headers on a thread").
        headers = (records.header_offsets, records.sizes)
        self._finding: Callable[[], np.ndarray] | None = None
        self._found: np.ndarray | None = None
        if _background_worth(headers[0]):
            self._finding = _in_background(self._data_starts, *headers)
        else:
            self._found = self._data_starts(*headers)

    @functools.cached_property
    def _np_starts(self) -> np.ndarray:
        if self._finding is not None:
            return self._finding()
        return self._found

    @functools.cached_property
    def _starts(self) -> list[int]:
        return self._np_starts.tolist()

    def _data_starts(self, offsets: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """Where each record's bytes begin: after its local header, its name and extra field, as
        torch's reader finds them (all headers at once: a 1 GB ResNet-shaped run has 34k records);
        -1 where the header is not one or the bytes run past the end of the file."""
        fast = _speedups.torchzip
        if fast is not None:
            starts = np.empty(len(offsets), dtype=np.int64)
            fast.data_starts(self._mapping, np.ascontiguousarray(offsets, dtype=np.int64),
                             np.ascontiguousarray(sizes, dtype=np.int64), starts)  # fmt: skip
            return starts
        inside = offsets + LOCAL_HEADER.size <= self.size
        at = np.where(inside, offsets, 0)
        starts = at + LOCAL_HEADER.size + le_field(self.bytes, at + 26, 2) + le_field(self.bytes, at + 28, 2)
        ok = inside & (le_field(self.bytes, at, 4) == int.from_bytes(LOCAL_SIG, "little"))
        return np.where(ok & (starts + sizes <= self.size), starts, -1)

    def indices(self, keys: list[str], nbytes: list[int]) -> list[int]:
        """The records `data/<key>` of `keys`, checked a column at a time: each with its local
        header found, and `nbytes` long (what its storage id says it holds)."""
        found = record_numbers(keys, len(self._starts))
        if found is None:
            raise Declined(Reason.RECORD, "a storage key that names no record")
        at = np.array(found, dtype=np.int64)
        if np.any(self._np_starts[at] < 0) or np.any(self._np_sizes[at] != np.array(nbytes, dtype=np.int64)):
            raise Declined(Reason.RECORD, "a record without its local header, or not the size its storage needs")
        return found

    def extents(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Where records `indices` (checked by `indices()`) begin in the file, and their sizes."""
        at = np.array(indices, dtype=np.int64)
        return self._np_starts[at], self._np_sizes[at]

    def get(self, key: str, nbytes: int) -> RecordBytes:
        """The `nbytes` of record `data/<key>` (checked by `indices()`), not yet a torch storage."""
        return RecordBytes(self, self._starts[self.indices([key], [nbytes])[0]], nbytes)

    def storage(self, start: int, nbytes: int) -> torch.UntypedStorage:
        """`nbytes` from `start` as a slice of the whole mapping as one torch storage
        (non-resizable: `set_` refuses a tensor past a record's end), made when first asked."""
        if self._storage is None:
            torch = _torch()
            self._storage = torch.frombuffer(self._mapping, dtype=torch.uint8).untyped_storage()
        # without UntypedStorage.__getitem__'s Python wrapper (it only refuses meta storages)
        return _torch()._C.StorageBase.__getitem__(self._storage, slice(start, start + nbytes))

    def tensor(self, record: int, dtype: str, offset: int, shape: tuple[int, ...],
               stride: tuple[int, ...]) -> torch.Tensor:  # fmt: skip
        """The tensor of a `MappedTensorRef` (record checked by `indices()` when it was made)."""
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
        """The tensor `(offset, size, stride)` (non-negative ints, as `_checked` leaves them) of
        `dtype` over these bytes as a numpy array (the mapping's, no copy); None where numpy does
        not hold that dtype, or an element would lie past the record (torch's `set_` refuses those
        too, and decides the message)."""
        kind = _NUMPY_DTYPES.get(dtype.name)
        if kind is None:
            return None
        itemsize, count = dtype.itemsize, math.prod(size)
        # the last element's index plus one (exact: Python ints); an empty tensor reaches nothing
        reach = 0 if count == 0 else offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
        if reach * itemsize > self.nbytes:
            return None
        data = self.records.bytes[self.start : self.start + self.nbytes]
        start = offset * itemsize if count else 0
        base = data[start : start + max(reach - offset, 0) * itemsize].view(kind)
        return np.lib.stride_tricks.as_strided(
            base, shape=size, strides=tuple(s * itemsize for s in stride), writeable=True
        )


def _check_environment(byteorder: bytes | None) -> None:
    """Settings under which torch.load would build something else than what we build."""
    if sys.byteorder != "little" or (byteorder is not None and byteorder != b"little"):
        raise Declined(Reason.SETTINGS, "big-endian machine or checkpoint")
    # torch.load's settings: where torch is not imported, nothing has changed them from their defaults
    torch = imported_torch()
    if torch is not None:
        endianness = torch.serialization.get_default_load_endianness()
        if byteorder is None and endianness not in (None, torch.serialization.LoadEndianness.LITTLE):
            raise Declined(Reason.SETTINGS, "a non-default load endianness is set")
        if torch.serialization.get_default_mmap_options() != mmap.MAP_PRIVATE:
            raise Declined(Reason.SETTINGS, "torch.load is set to map files shared")
    # EXT opcodes resolve through copyreg's registry, and its cache bypasses find_class
    if copyreg._inverted_registry:  # type: ignore[attr-defined]
        raise Declined(Reason.SETTINGS, "copyreg extensions are registered")


def open_archive(path: str, *, any_protocol: bool = False) -> tuple[bytes, Records]:
    """The pickle and the mapped records of a torch.save zip this module reads.

    Args:
        path: the file.
        any_protocol: take a pickle of any protocol (the recovery reader), not only torch's 2.

    Returns:
        (the `data.pkl` bytes, its records over a private mapping of the file).

    Raises:
        Declined: an unusual archive, another protocol, or settings torch.load reads otherwise.
    """
    facts = zip_facts(path)
    if facts.pickle is None or facts.records is None:
        raise Declined(Reason.ARCHIVE)
    if not (any_protocol or facts.pickle.startswith(_TORCH_PROTOCOL)):
        raise Declined(Reason.PROTOCOL)
    _check_environment(facts.records.byteorder)
    size = os.path.getsize(path)
    if size == 0:  # nothing to map; zip_facts said otherwise, so the file changed under us
        raise Declined(Reason.ARCHIVE, "an empty file")
    return facts.pickle, Records(path, facts.records, size)


class Rebuilt(NamedTuple):
    """What a pickled `_rebuild_tensor_v2/v3(...)` call makes: its arguments, unchecked (`dtype`:
    v3's, None for v2, whose tensors take their storage's; `parameter`: the `requires_grad` of the
    Parameter it is wrapped in, None for a plain tensor). `_resolve` checks all of a file's at
    once, as one `Rebuilt` of columns."""

    storage: Any  # the persistent id, a `_StorageId` once checked
    offset: Any
    size: Any
    stride: Any
    requires_grad: Any
    hooks: Any
    dtype: Any
    parameter: Any


class _StorageId(NamedTuple):
    """A persistent id as torch.save writes it: `("storage", <storage type>, key, location, numel)`."""

    tag: Any
    kind: Any
    key: Any
    location: Any  # ignored: everything is mapped to the CPU
    numel: Any


_new_rebuilt = functools.partial(tuple.__new__, Rebuilt)


def _rebuild_stubs() -> dict[tuple[str, str], Callable[..., Any]]:
    # torch writes the optional `metadata` only when there is some (conj/neg bits): an argument
    # too many, which torch.load then reads
    def rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any,
                          hooks: Any) -> Rebuilt:  # fmt: skip
        return _new_rebuilt((storage, offset, size, stride, requires_grad, hooks, None, None))

    def rebuild_tensor_v3(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any,
                          hooks: Any, dtype: Any) -> Rebuilt:  # fmt: skip
        _arguments(is_dtype(dtype), "tensor dtype")
        return _new_rebuilt((storage, offset, size, stride, requires_grad, hooks, dtype, None))

    def rebuild_parameter(data: Any, requires_grad: Any, hooks: Any) -> Rebuilt:
        _arguments(type(data) is Rebuilt and data.parameter is None and type(requires_grad) is bool
                   and not hooks, "Parameter")  # fmt: skip
        return data._replace(parameter=requires_grad)

    fast = _speedups.torchzip
    return {
        # the C packer returns the same `Rebuilt` without a Python frame per tensor
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor_v2 if fast is None else fast.packer(Rebuilt, 6, 8),
        ("torch._utils", "_rebuild_tensor_v3"): rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
    }


def torch_policy(*, torch_dtypes: bool) -> Policy:
    """The policy of a torch.save pickle: `Rebuilt` records for tensors, storage ids as pickled.

    Args:
        torch_dtypes: torch's own dtypes (imports torch), not `DType` tokens where torch is not
            imported.
    """
    fast = _speedups.torchzip
    return Policy({**constants(torch_dtypes=torch_dtypes), **stubs(), **_rebuild_stubs()},
                  persistent_load=_same if fast is None else fast.identity)  # fmt: skip


def _same(pid: Any) -> Any:  # the ids are checked afterwards, all at once (`_checked`)
    return pid


_CONTAINERS = frozenset({dict, OrderedDict, Counter, list, tuple, set, frozenset})
_ATOMS = frozenset({str, int})  # nothing inside them to walk
_DICTS = frozenset({dict, OrderedDict, Counter})
# no real function is reachable; a dtype pickled as a value is torch's to build (scan: a DType)
_PRIVATE: tuple[type, ...] = (StorageType, DType, types.FunctionType)
if _speedups.torchzip is not None:  # the C rebuild stub, as the Python one
    _PRIVATE += (_speedups.torchzip.Packer,)


def record_places(result: Any) -> list[tuple[Any, list[Any]]]:
    """(container, keys) of every `Rebuilt` in the result: dict values and list items only
    (state dicts and optimizer states keep tensors there); Declined for one elsewhere, or for
    our own objects — a storage type pickled on its own (torch.load gives a torch storage
    there), a stub. Containers (and the attributes a BUILD gave a dict, like a state_dict's
    `_metadata`) are walked once."""
    places: list[tuple[Any, list[Any]]] = []
    stack, seen = [result], set()
    while stack:
        value = stack.pop()
        kind = type(value)
        if kind in _CONTAINERS:
            if id(value) in seen:
                continue
            seen.add(id(value))
            if kind in _DICTS:
                if not _ATOMS.issuperset(map(type, value.keys())):  # str keys hold nothing to walk
                    stack.extend(value.keys())
                if getattr(value, "__dict__", None):
                    stack.append(value.__dict__)
                pairs, items = value.items(), value.values()
            elif kind is list:
                pairs, items = enumerate(value), value
            else:
                stack.extend(value)
                continue
            keys = [key for key, item in pairs if type(item) is Rebuilt]
            if keys:
                places.append((value, keys))
            if len(keys) < len(value):  # a state dict holds tensors only: nothing else to walk
                stack.extend(item for item in items if type(item) is not Rebuilt)
        elif kind is Rebuilt:
            raise Declined(Reason.PLACE, "a tensor outside a dict or list")
        elif isinstance(value, _PRIVATE) or (kind is tuple and value[:1] == ("storage",)):
            raise Declined(Reason.PLACE, f"a bare {kind.__name__}")
    return places


def resolve_places(result: Any, records: Records, *, refs: bool) -> Any:
    """`result` with each `Rebuilt` in it replaced by its tensor (with `refs`: by a
    `MappedTensorRef` where the engine reads it in place)."""
    places = record_places(result)
    keys = [key for _, keys in places for key in keys]
    rebuilt = [container[key] for container, keys in places for key in keys]
    made = _resolve(rebuilt, keys, records, refs=refs)
    at = 0
    for container, keys in places:
        values = made[at : at + len(keys)]
        at += len(keys)
        if type(container) is dict or type(container) is OrderedDict:  # not Counter: its update adds
            container.update(zip(keys, values))
        else:
            for key, value in zip(keys, values):
                container[key] = value
    return result


# The dtypes the engine's CPU kernel reads in place (`engine/fused.py`).
_IN_PLACE_DTYPES = frozenset({"float32", "float64", "bfloat16", "float16"})


def _contiguous_strides(size: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for dim in reversed(size):
        strides.append(step)
        step *= max(dim, 1)
    return tuple(reversed(strides))


def _types(column: Any) -> set[type]:
    return set(map(type, column))


def _checked(rebuilt: list[Rebuilt]) -> tuple[Rebuilt, _StorageId]:
    """The tensors' arguments and storage ids as columns, each checked as torch.load checks one
    tensor's (a column at a time: a call per tensor costs more than the unpickle)."""
    args = Rebuilt._make(zip(*rebuilt))
    if _types(args.storage) != {tuple} or set(map(len, args.storage)) != {5}:
        raise Declined(Reason.STORAGE_ID)
    ids = _StorageId._make(zip(*args.storage))
    if (
        set(ids.tag) != {"storage"}
        or _types(ids.kind) != {StorageType}
        or _types(ids.key) != {str}
        or _types(ids.location) != {str}
        or _types(ids.numel) != {int}
        or min(ids.numel) < 0
    ):
        raise Declined(Reason.STORAGE_ID)
    dims, steps = list(chain.from_iterable(args.size)), list(chain.from_iterable(args.stride))
    _arguments(
        _types(args.offset) == {int}
        and min(args.offset) >= 0
        and _types(args.size) == _types(args.stride) == {tuple}
        and _types(dims) | _types(steps) <= {int}
        and min(dims, default=0) >= 0
        and min(steps, default=0) >= 0
        and list(map(len, args.size)) == list(map(len, args.stride))
        and _types(args.requires_grad) == {bool}
        and _types(args.hooks) <= {type(None), OrderedDict}
        and not any(args.hooks),  # only empty OrderedDicts (v3's dtype: checked by its stub)
        "tensor",
    )
    return args, ids


def _resolve(rebuilt: list[Rebuilt], names: list[Any], records: Records, *, refs: bool) -> list[Any]:
    """A tensor for each `Rebuilt`, built as torch.load builds it; with `refs`, a `MappedTensorRef`
    instead for each contiguous tensor of a dtype the engine reads in place and more than one
    element (not integer buffers, scalars such as an optimizer's `step`, views)."""
    if not rebuilt:
        return []
    fast = _speedups.torchzip
    if refs and fast is not None:
        made = fast.resolve_refs(rebuilt, names, records._np_starts, records._np_sizes, records.base,
                                 records.size, records, MappedTensorRef, StorageType, OrderedDict,
                                 _dtype_facts(imported_torch()))  # fmt: skip
        if made is not None:  # else something it does not read plainly: the checks below decide
            for i in [i for i, ref in enumerate(made) if ref is None]:
                r = rebuilt[i]
                made[i] = _built(records, r, r.storage[1].dtype if r.dtype is None else r.dtype, {})
            return made
    args, ids = _checked(rebuilt)
    # torch.load lets the first id of a key fix its dtype and size; torch.save writes one
    storages = dict(zip(ids.key, zip(ids.kind, ids.numel)))
    if len(storages) != len(ids.key) and len(set(zip(ids.key, ids.kind, ids.numel))) != len(storages):
        raise Declined(Reason.STORAGE_ID, "a storage named with two dtypes or sizes")
    storage_bytes = [kind.itemsize * numel for kind, numel in storages.values()]
    row_of = dict(zip(storages, records.indices(list(storages), storage_bytes)))
    # the tensors' dtypes: their storages' (v2), or their own (v3, over untyped bytes)
    dtypes = [kind.dtype if dtype is None else dtype for kind, dtype in zip(ids.kind, args.dtype)]
    if not refs:
        shared: dict[str, Any] = {}  # the storage of each key, as torch.load shares it
        return [_built(records, r, dtype, shared) for r, dtype in zip(rebuilt, dtypes)]
    rows = list(map(row_of.__getitem__, ids.key))
    layouts = {size: (math.prod(size), _contiguous_strides(size)) for size in set(args.size)}
    counts, contiguous = zip(*map(layouts.__getitem__, args.size))
    # per dtype (a handful): its name, item size, and whether the engine reads it in place
    facts = {dtype: (dtype_name(dtype), dtype.itemsize, dtype_name(dtype) in _IN_PLACE_DTYPES)
             for dtype in set(dtypes)}  # fmt: skip
    dtype_names, itemsizes, in_place_dtype = zip(*map(facts.__getitem__, dtypes))
    offsets, np_counts = _bounded(args.offset, records.size), _bounded(counts, records.size)
    np_itemsizes = np.array(itemsizes, dtype=np.int64)
    in_place = (
        (np_counts > 1)
        & np.array(list(map(operator.eq, args.stride, contiguous)), dtype=bool)
        & np.array(in_place_dtype, dtype=bool)
    )
    starts, record_bytes = records.extents(rows)  # `indices` checked each against its storage id
    # Exact: offsets and counts are at most the file's size + 1 (`_bounded`), item sizes at most
    # 8 and records within the file, so no int64 here can wrap. A wrapped product would pass
    # and hand the kernel an address outside the record: another record's bytes, or a fault.
    if np.any(in_place & ((offsets + np_counts) * np_itemsizes > record_bytes)):
        raise Declined(Reason.RECORD, "a tensor past the end of its record")
    addresses = (records.base + starts + offsets * np_itemsizes).tolist()
    # named by their keys (`model_refs` renames the few it cleans); "" for keys not text
    labels = names if _types(names) == {str} else [key if type(key) is str else "" for key in names]
    made = map(_new_ref, zip(labels, args.size, dtype_names, counts, addresses, repeat(records), rows,
                             args.offset, args.stride))  # fmt: skip
    if in_place.all():
        return list(made)
    return [ref if mapped else _built(records, r, dtype, {})
            for ref, mapped, r, dtype in zip(made, in_place.tolist(), rebuilt, dtypes)]  # fmt: skip


@functools.lru_cache(maxsize=4)
def _dtype_facts(torch: Any) -> dict[Any, tuple[str, int, bool]]:
    """(name, item size, read in place) of every dtype a policy hands a pickle: the `DType`
    tokens, and torch's own where torch is imported (the C loop looks each tensor's up here)."""
    found: list[Any] = list(DTYPES.values())
    if torch is not None:
        found += [d for d in (getattr(torch, name, None) for name in DTYPES) if d is not None]
    return {d: (dtype_name(d), d.itemsize, dtype_name(d) in _IN_PLACE_DTYPES) for d in found}


def _built(records: Records, rebuilt: Rebuilt, dtype: Any, shared: dict[str, Any]) -> Any:
    """The tensor (or Parameter) of one `Rebuilt` (checked by `_checked`), as torch.load builds
    it; over the storage in `shared` for its key, where a tensor built before has left one."""
    storage = _StorageId._make(rebuilt.storage)
    data = shared.get(storage.key)
    if data is None:
        data = records.get(storage.key, storage.kind.itemsize * storage.numel)
        if type(dtype) is not DType:  # a torch storage, shared as torch.load shares it
            data = data.storage()
        if data.nbytes if type(data) is RecordBytes else data.nbytes():  # torch shares no empty one
            shared[storage.key] = data
    tensor = tensor_over(data, dtype, rebuilt.offset, rebuilt.size, rebuilt.stride, rebuilt.requires_grad,
                         rebuilt.hooks)  # fmt: skip
    if rebuilt.parameter is None:
        return tensor
    param = _torch().nn.Parameter(tensor, rebuilt.parameter)
    param._backward_hooks = OrderedDict()  # as torch._utils._rebuild_parameter does
    return param


def _bounded(values: tuple[int, ...], size: int) -> np.ndarray:
    """Non-negative ints (checked by the caller) as int64, each clipped to `size + 1`: a value
    past the file's size fails every bound the same, and numpy cannot hold a pickle's larger
    ints (or would wrap what it computes from them). `size` is a file's, far below 2**58, so
    sums and products of a few of these stay exact."""
    if size >= 1 << 58:
        raise Declined(Reason.ARCHIVE, "a file too large to check in 64-bit arithmetic")
    if max(values, default=0) > size:  # rare: only a damaged or crafted file
        values = tuple(min(value, size + 1) for value in values)
    return np.array(values, dtype=np.int64)


_new_ref = functools.partial(tuple.__new__, MappedTensorRef)  # a ref from its fields, no call


def read_torch_zip(path: str, *, refs: bool) -> Any:
    """What `torch.load(path, weights_only=True, mmap=True, map_location="cpu")` returns; with
    `refs`, a `MappedTensorRef` (named by its key) in place of each contiguous floating-point
    tensor (see `_resolve`): nothing is built for them, and the engine reads them in place.

    Raises:
        Declined: this file is for torch.load to read (and any other error counts the same).
    """
    pickled, records = open_archive(path)
    # Thousands of new containers trigger full collections that walk everything alive: half
    # the time of a load, measured. An unpickle makes no garbage cycles worth collecting.
    with collector_paused():
        return resolve_places(unpickle(pickled, torch_policy(torch_dtypes=not refs)), records, refs=refs)


def load_torch_zip_fast(path: str) -> Any:
    """`read_torch_zip(path, refs=False)`: the object torch.load returns, every tensor built."""
    return read_torch_zip(path, refs=False)


def scan_torch_zip(path: str) -> Any:
    """`read_torch_zip(path, refs=True)`: refs for the tensors the engine reads in place."""
    return read_torch_zip(path, refs=True)
