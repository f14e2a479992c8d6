"""Scanning a `torch.save` zip for the engine: `_fast_torch_zip`'s object, with refs in place of
the tensors the engine reduces.

The same archive checks, allow-list and C unpickle as `load_torch_zip_fast` (its module docstring
says why they are safe), with rebuild stubs that keep their arguments instead of building tensors.
Every record of the file is then checked a column at a time (`_resolve`): one Python call per
tensor cost more than the unpickle. Contiguous float tensors of more than one element become
`MappedTensorRef`s — the address of their bytes in the file's private mapping, checked in bounds,
with shape, dtype and numel — that the engine's CPU kernel reads in place; the rest are built as
`load_torch_zip_fast` builds them: about half the time of building the tensors, and a small
fraction of torch.load's (docs/benchmarks.md, "Behind the design").
"""

from __future__ import annotations

import functools
import math
import operator
from collections import OrderedDict
from collections.abc import Callable
from itertools import chain, repeat
from typing import Any, NamedTuple

import numpy as np

from normscope._gc import collector_paused

from ._fast_torch_zip import (
    ITEMSIZE_OF,
    Declined,
    Records,
    RestrictedUnpickler,
    StorageType,
    is_dtype,
    open_archive,
    record_places,
    scan_constants,
    stubs,
    tensor_over,
)
from ._refs import MappedTensorRef, dtype_name


class _Rebuilt(NamedTuple):
    """What a pickled `_rebuild_tensor_v2/v3(...)` call makes in `scan_torch_zip`: its arguments,
    unchecked (`dtype`: v3's, None for v2, whose tensors take their storage's); `_resolve` checks
    all of a file's at once."""

    storage: Any
    offset: Any
    size: Any
    stride: Any
    requires_grad: Any
    hooks: Any
    dtype: Any


_new_rebuilt = functools.partial(tuple.__new__, _Rebuilt)


def _scan_stubs() -> dict[tuple[str, str], Callable[..., Any]]:
    found = stubs()

    # torch writes the optional `metadata` only when there is some (conj/neg bits): left to
    # load_torch_zip_fast, which leaves it to torch
    def rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any,
                          hooks: Any) -> _Rebuilt:  # fmt: skip
        return _new_rebuilt((storage, offset, size, stride, requires_grad, hooks, None))

    def rebuild_tensor_v3(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any,
                          hooks: Any, dtype: Any) -> _Rebuilt:  # fmt: skip
        if not is_dtype(dtype):
            raise Declined("tensor arguments torch.save does not write")
        return _new_rebuilt((storage, offset, size, stride, requires_grad, hooks, dtype))

    def rebuild_parameter(data: Any, requires_grad: Any, hooks: Any) -> _Rebuilt:
        if type(data) is not _Rebuilt or type(requires_grad) is not bool or hooks:
            raise Declined("parameter arguments torch.save does not write")
        return data

    found[("torch._utils", "_rebuild_tensor_v2")] = rebuild_tensor_v2
    found[("torch._utils", "_rebuild_tensor_v3")] = rebuild_tensor_v3
    found[("torch._utils", "_rebuild_parameter")] = rebuild_parameter
    return found


class _RecordUnpickler(RestrictedUnpickler):
    """Leaves storage ids and tensor arguments as they are pickled (tuples, `_Rebuilt`)."""

    def __init__(self, pickled: bytes) -> None:
        super().__init__(pickled, {**scan_constants(), **_scan_stubs()})

    @staticmethod
    def persistent_load(pid: Any) -> Any:
        return pid


# The dtypes the engine's CPU kernel reads in place (`engine/fused.py`).
_IN_PLACE_DTYPES = frozenset({"float32", "float64", "bfloat16", "float16"})


def _contiguous_strides(size: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for dim in reversed(size):
        strides.append(step)
        step *= max(dim, 1)
    return tuple(reversed(strides))


def _resolve(rebuilt: list[_Rebuilt], names: list[Any], records: Records) -> list[Any]:
    """A `MappedTensorRef` or a tensor for each `_Rebuilt`, every argument checked as
    `_new_tensor` and `persistent_load` check them, a column at a time: one Python call per
    tensor costs more than the unpickle. Refs for contiguous tensors of a dtype the engine reads
    in place and more than one element; tensors, built as torch.load builds them, for the rest
    (integer buffers, scalars such as an optimizer's `step`, views)."""
    if not rebuilt:
        return []
    pids, offsets, sizes, strides, grads, hooks, tensor_dtypes = zip(*rebuilt)
    if set(map(type, pids)) != {tuple} or set(map(len, pids)) != {5}:
        raise Declined("a persistent id other than a storage")
    tags, kinds, keys, locations, numels = zip(*pids)
    dims, steps = list(chain.from_iterable(sizes)), list(chain.from_iterable(strides))
    if (
        set(tags) != {"storage"}
        or set(map(type, kinds)) != {StorageType}
        or set(map(type, keys)) != {str}
        or set(map(type, locations)) != {str}  # ignored: everything is mapped to the CPU
        or set(map(type, numels)) != {int}
        or min(numels) < 0
    ):
        raise Declined("a storage id torch.save does not write")
    if (
        set(map(type, offsets)) != {int}
        or min(offsets) < 0
        or set(map(type, sizes)) != {tuple}
        or set(map(type, strides)) != {tuple}
        or not set(map(type, dims)) | set(map(type, steps)) <= {int}
        or min(dims, default=0) < 0
        or min(steps, default=0) < 0
        or list(map(len, sizes)) != list(map(len, strides))
        or set(map(type, grads)) != {bool}
        or not set(map(type, hooks)) <= {type(None), OrderedDict}
        or any(hooks)  # only empty OrderedDicts
    ):
        raise Declined("tensor arguments torch.save does not write")
    # torch.load lets the first id of a key fix its dtype and size; torch.save writes one
    storages = dict(zip(keys, zip(kinds, numels)))
    if len(storages) != len(keys) and len(set(zip(keys, kinds, numels))) != len(storages):
        raise Declined("a storage named with two dtypes or sizes")
    kinds_of, numels_of = zip(*storages.values())
    found = records.indices(list(storages), list(map(operator.mul, map(ITEMSIZE_OF, kinds_of),
                                                     numels_of)))  # fmt: skip
    index = dict(zip(storages, found))
    layouts = {size: (math.prod(size), _contiguous_strides(size)) for size in set(sizes)}
    counts, contiguous = zip(*map(layouts.__getitem__, sizes))
    # the tensors' dtypes: their storages' (v2), or their own (v3, over untyped bytes)
    if set(tensor_dtypes) == {None}:
        dtypes = list(map(_DTYPE_OF, kinds))
    elif not all(dtype is None or is_dtype(dtype) for dtype in tensor_dtypes):
        raise Declined("tensor arguments torch.save does not write")
    else:
        dtypes = [k.dtype if d is None else d for k, d in zip(kinds, tensor_dtypes)]
    # per dtype (a handful): its name, item size, and whether the engine reads it in place
    facts = {dtype: (dtype_name(dtype), dtype.itemsize, dtype_name(dtype) in _IN_PLACE_DTYPES)
             for dtype in set(dtypes)}  # fmt: skip
    dtype_names, itemsizes, in_place_dtype = zip(*map(facts.__getitem__, dtypes))
    np_offsets, np_counts = _bounded(offsets, records.size), _bounded(counts, records.size)
    np_itemsizes = np.array(itemsizes, dtype=np.int64)
    in_place = (
        (np_counts > 1)
        & np.array(list(map(operator.eq, strides, contiguous)), dtype=bool)
        & np.array(in_place_dtype, dtype=bool)
    )
    rows = list(map(index.__getitem__, keys))
    starts, record_bytes = records.extents(rows)  # `indices` checked each against its storage id
    # Exact: offsets and counts are at most the file's size + 1 (`_bounded`), item sizes at most
    # 8 and records within the file, so no int64 here can wrap. A wrapped product would pass
    # and hand the kernel an address outside the record: another record's bytes, or a fault.
    if np.any(in_place & ((np_offsets + np_counts) * np_itemsizes > record_bytes)):
        raise Declined("a tensor past the end of its record")
    addresses = (records.base + starts + np_offsets * np_itemsizes).tolist()
    # named by their keys (`model_refs` renames the few it cleans); "" for keys not text
    labels = names if set(map(type, names)) == {str} else [
        key if type(key) is str else "" for key in names
    ]
    refs = map(_new_ref, zip(labels, sizes, dtype_names, counts, addresses, repeat(records), rows,
                             offsets, strides))  # fmt: skip
    if in_place.all():
        return list(refs)
    return [
        ref if mapped else tensor_over(
            records.get(key, storage_numel * kind.itemsize), dtype, offset, size, stride, grad,
            hook,
        )
        for ref, mapped, kind, dtype, key, storage_numel, offset, size, stride, grad, hook in zip(
            refs, in_place.tolist(), kinds, dtypes, keys, numels, offsets, sizes, strides, grads,
            hooks,
        )
    ]


def _bounded(values: tuple[int, ...], size: int) -> np.ndarray:
    """Non-negative ints (checked by the caller) as int64, each clipped to `size + 1`: a value
    past the file's size fails every bound the same, and numpy cannot hold a pickle's larger
    ints (or would wrap what it computes from them). `size` is a file's, far below 2**58, so
    sums and products of a few of these stay exact."""
    if size >= 1 << 58:
        raise Declined("a file too large to check in 64-bit arithmetic")
    if max(values, default=0) > size:  # rare: only a damaged or crafted file
        values = tuple(min(value, size + 1) for value in values)
    return np.array(values, dtype=np.int64)


_DTYPE_OF = operator.attrgetter("dtype")
_new_ref = functools.partial(tuple.__new__, MappedTensorRef)  # a ref from its fields, no call


def scan_torch_zip(path: str) -> Any:
    """What `load_torch_zip_fast` returns, with a `MappedTensorRef` (named by its key) in place of each
    contiguous floating-point tensor (see `_resolve`): nothing is built for them, and the engine
    reads their bytes in place. Declined (or another exception) where `load_torch_zip_fast`
    should read the file instead; the checks are that path's, and torch.load's through it."""
    pickled, records = open_archive(path)
    with collector_paused():
        result = _RecordUnpickler(pickled).load()
        places = record_places(result, _Rebuilt)
        keys = [key for _, keys in places for key in keys]
        rebuilt = [container[key] for container, keys in places for key in keys]
        refs = iter(_resolve(rebuilt, keys, records))
        for container, keys in places:
            container.update(zip(keys, refs))
        return result
