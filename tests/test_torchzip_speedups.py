"""The torch.save reader's C loops (`_torchzip.c`) against its Python ones: where the C loops
answer, the answer is the Python one, value for value; where the Python loops refuse, the C
ones decline (and the Python ones then refuse, with their reason). On real checkpoints and on
damaged directories, headers and tensor arguments."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _sources_helpers import adamw, sgd, small_cnn, small_mlp, train

from normscope.sources import _fast_torch_zip, _speedups, _zipdir
from normscope.sources._fast_torch_zip import (
    Rebuilt,
    Records,
    StorageType,
    record_places,
    scan_torch_zip,
    torch_policy,
)
from normscope.sources._refs import MappedTensorRef
from normscope.sources._unpickle import Declined, unpickle

pytestmark = pytest.mark.skipif(_speedups.torchzip is None, reason="the C reader loops are not built")
fast = _speedups.torchzip

SAMPLES = Path(__file__).resolve().parent.parent / "sample_runs"
SAMPLE_FILES = sorted(p for p in SAMPLES.rglob("*") if p.suffix in (".pt", ".ckpt"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> list[Path]:  # type: ignore[no-untyped-def]
    """torch.save files with every kind of tensor the scan meets: parameters and buffers
    (integer BN counters), optimizer state (scalars, momentum), shared storages and views,
    non-contiguous and empty tensors, every floating dtype."""
    root = tmp_path_factory.mktemp("speedups")
    cnn, mlp = small_cnn(), small_mlp()
    cnn_opt, mlp_opt = sgd(cnn), adamw(mlp)
    train(cnn, cnn_opt, steps=2)
    train(mlp, mlp_opt, steps=2)
    base = torch.arange(60.0).reshape(6, 10)
    files = {
        "training.pt": {"model": cnn.state_dict(), "optimizer": cnn_opt.state_dict(),
                        "mlp": mlp.state_dict(), "mlp_opt": mlp_opt.state_dict(), "epoch": 3},
        "views.pt": {"whole": base, "rows": base[2:4], "t": base.t(), "col": base[:, 3],
                     "scalar": torch.tensor(2.5), "one": torch.ones(1), "empty": torch.empty(0, 4),
                     "list": [base[0], base[1:3]], "nested": {"x": base[5]}},
        "dtypes.pt": {str(d): torch.arange(12, dtype=torch.float32).to(d).reshape(3, 4)
                      for d in (torch.float64, torch.float32, torch.float16, torch.bfloat16,
                                torch.int64, torch.int8, torch.bool)},
        "parameter.pt": {"p": torch.nn.Parameter(torch.ones(3, 2)), "b": torch.zeros(5)},
    }  # fmt: skip
    paths = []
    for name, value in files.items():
        torch.save(value, root / name)
        paths.append(root / name)
    return paths


def _normalised(value: Any) -> Any:
    """A scan's result with each ref's mapping replaced by where its bytes lie in the file (two
    loads map the file at two addresses)."""
    if type(value) is MappedTensorRef:
        return ("ref", value.name, value.shape, value.dtype, value.numel, value.address - value.archive.base,
                value.record, value.offset, value.stride)  # fmt: skip
    if isinstance(value, dict):
        return (type(value), [(k, _normalised(v)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value), [_normalised(v) for v in value])
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.strides, value.tobytes())
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, torch.Tensor):
        return ("tensor", value.dtype, tuple(value.shape), value.stride(), value.storage_offset(),
                value.requires_grad, type(value), value.detach().reshape(-1).contiguous().view(torch.uint8).tolist())  # fmt: skip
    return value


def _both(monkeypatch: pytest.MonkeyPatch, read: Any) -> tuple[Any, Any]:
    """`read()` with the C loops, then with the Python ones: each a value, or the exception's
    (type, reason)."""
    outcomes = []
    for loops in (fast, None):
        monkeypatch.setattr(_speedups, "torchzip", loops)
        _zipdir._zip_facts.cache_clear()
        try:
            outcomes.append(read())
        except Declined as exc:
            outcomes.append(("declined", exc.reason))
        except Exception as exc:  # noqa: BLE001 - compared as its type
            outcomes.append(("failed", type(exc)))
    monkeypatch.setattr(_speedups, "torchzip", fast)
    _zipdir._zip_facts.cache_clear()
    return outcomes[0], outcomes[1]


def test_real_checkpoints_scan_the_same_with_either_loops(checkpoints, monkeypatch):
    for path in [*checkpoints, *SAMPLE_FILES]:
        with_c, with_python = _both(monkeypatch, lambda: _normalised(scan_torch_zip(str(path))))
        assert with_c == with_python, path
        assert with_c[0] is dict, path  # read, not declined


def test_the_c_loops_make_refs_for_the_same_tensors(checkpoints):
    scanned = scan_torch_zip(str(checkpoints[1]))
    refs = {k for k, v in scanned.items() if type(v) is MappedTensorRef}
    # contiguous floats of more than one element; views that start inside their storage too
    assert refs == {"whole", "rows"}
    assert isinstance(scanned["t"], torch.Tensor | np.ndarray) and isinstance(scanned["col"], torch.Tensor | np.ndarray)


def test_the_c_loops_refs_are_left_out_of_the_collector_and_still_freed(checkpoints):
    """The collector does not scan the refs (34k of them made each collection after an open of a
    ResNet-shaped run cost ~17 ms); reference counting frees them, and with the last one the
    archive and its mapping."""
    import gc
    import weakref

    scanned = scan_torch_zip(str(checkpoints[1]))
    refs = [v for v in scanned.values() if type(v) is MappedTensorRef]
    assert refs and not any(map(gc.is_tracked, refs))
    archive = weakref.ref(refs[0].archive)
    assert refs[0].archive is refs[1].archive
    first = refs[0].load().clone()
    assert torch.equal(first, torch.arange(60.0).reshape(6, 10))
    collecting = gc.isenabled()
    gc.disable()
    try:
        del scanned, refs
        assert archive() is None  # freed by reference counting alone: no collection ran
    finally:
        if collecting:
            gc.enable()


# ---- the central directory ------------------------------------------------------------------


def _directory_of(path: Path) -> tuple[bytes, int, int]:
    data = path.read_bytes()
    with open(path, "rb") as f:
        assert _zipdir.read_directory(f) is not None
    end = data.rfind(b"PK\x05\x06")
    count = int.from_bytes(data[end + 10 : end + 12], "little")
    size = int.from_bytes(data[end + 12 : end + 16], "little")
    offset = int.from_bytes(data[end + 16 : end + 20], "little")
    if offset == 0xFFFFFFFF or size == 0xFFFFFFFF or count == 0xFFFF:  # zip64 end record
        end64 = data.rfind(b"PK\x06\x06")
        count = int.from_bytes(data[end64 + 32 : end64 + 40], "little")
        size = int.from_bytes(data[end64 + 40 : end64 + 48], "little")
        offset = int.from_bytes(data[end64 + 48 : end64 + 56], "little")
    return data[offset : offset + size], count, len(data)


def _members_both(monkeypatch, directory: bytes, count: int, size: int) -> tuple[Any, Any]:
    def read() -> Any:
        found = _zipdir._members(directory, count, size)
        return None if found is None else (found.names, *(column.tolist() for column in found[1:]))

    return _both(monkeypatch, read)


def _damaged(directory: bytes, rng: random.Random) -> bytes:
    data = bytearray(directory)
    kind = rng.randrange(5)
    if kind == 0:  # a byte changed
        data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:  # cut short
        del data[rng.randrange(len(data)) :]
    elif kind == 2:  # a member signature where none belongs
        at = rng.randrange(len(data) - 4)
        data[at : at + 4] = b"PK\x01\x02"
    elif kind == 3:  # a header field set to its largest value (zip64 marker, huge sizes)
        at = rng.randrange(len(data) - 4)
        data[at : at + 4] = b"\xff\xff\xff\xff"
    else:  # a non-ASCII byte in the first name
        data[46] = 0xC3
    return bytes(data)


def test_directories_read_the_same_with_either_loops(checkpoints, monkeypatch):
    for path in [*checkpoints, *SAMPLE_FILES[:3]]:
        directory, count, size = _directory_of(path)
        with_c, with_python = _members_both(monkeypatch, directory, count, size)
        assert with_c == with_python and with_c is not None, path


def test_damaged_directories_read_the_same_with_either_loops(checkpoints, monkeypatch):
    rng = random.Random(20261205)
    directory, count, size = _directory_of(checkpoints[0])
    refused = 0
    for _ in range(600):
        damaged = _damaged(directory, rng)
        claimed = count + rng.choice([0, 0, 0, -1, 1])
        with_c, with_python = _members_both(monkeypatch, damaged, claimed, size)
        assert with_c == with_python
        refused += with_python is None
    assert refused > 100  # the damage reached the checks


def test_a_directory_the_c_loop_declines_is_read_by_python(checkpoints, monkeypatch):
    directory, count, size = _directory_of(checkpoints[0])
    crcs, sizes, offsets = (np.empty(count, dtype=np.int64) for _ in range(3))
    zip64 = bytearray(directory)
    zip64[24:28] = b"\xff\xff\xff\xff"  # the first member's size in its zip64 field
    assert fast.members(bytes(zip64), count, size, crcs, sizes, offsets) is None
    assert fast.members(directory, count, size, crcs, sizes, offsets) is not None
    with pytest.raises(ValueError, match="int64 column"):
        fast.members(directory, count, size, crcs[:-1], sizes, offsets)


# ---- the local headers ----------------------------------------------------------------------


def test_local_headers_are_found_the_same_with_either_loops(checkpoints, monkeypatch):
    path = checkpoints[0]
    records = _zipdir.zip_facts(str(path)).records
    size = path.stat().st_size
    rng = np.random.default_rng(5)
    offsets = np.concatenate([records.header_offsets, rng.integers(0, size + 100, 200), [size - 29, size - 30]])
    sizes = np.concatenate([records.sizes, rng.integers(0, 1 << 20, 202)])
    found = []
    for loops in (fast, None):
        monkeypatch.setattr(_speedups, "torchzip", loops)
        found.append(Records(str(path), records, size)._data_starts(offsets, sizes).tolist())
    assert found[0] == found[1]
    assert all(s >= 0 for s in found[0][: len(records.sizes)]) and -1 in found[0]


# ---- the tensors ----------------------------------------------------------------------------


def _rebuilt_of(path: Path) -> tuple[list[Rebuilt], list[Any], Records]:
    pickled, records = _fast_torch_zip.open_archive(str(path))
    result = unpickle(pickled, torch_policy(torch_dtypes=False))
    places = record_places(result)
    keys = [key for _, keys in places for key in keys]
    return [container[key] for container, keys in places for key in keys], keys, records


class Text(str):
    pass


class Dims(tuple):
    pass


# (what is changed, how): each keeps the other tensors as they were
MUTATIONS = {
    "offset bool": lambda r: r._replace(offset=True),
    "offset negative": lambda r: r._replace(offset=-1),
    "offset huge": lambda r: r._replace(offset=2**70),
    "offset past the file": lambda r: r._replace(offset=1 << 40),
    "size not a tuple": lambda r: r._replace(size=list(r.size)),
    "size a tuple subclass": lambda r: r._replace(size=Dims(r.size)),
    "dim negative": lambda r: r._replace(size=(-1, *r.size[1:])),
    "dim huge": lambda r: r._replace(size=(2**63, *r.size[1:])),
    "dims past int64": lambda r: r._replace(size=(2**40, 2**40), stride=(2**40, 1)),
    "stride longer": lambda r: r._replace(stride=(*r.stride, 1)),
    "stride zero": lambda r: r._replace(stride=tuple(0 for _ in r.stride)),
    "stride float": lambda r: r._replace(stride=tuple(float(s) for s in r.stride)),
    "requires_grad int": lambda r: r._replace(requires_grad=0),
    "hooks full": lambda r: r._replace(hooks=OrderedDict(a=1)),
    "hooks dict": lambda r: r._replace(hooks={}),
    "storage list": lambda r: r._replace(storage=list(r.storage)),
    "storage short": lambda r: r._replace(storage=r.storage[:4]),
    "tag other": lambda r: r._replace(storage=("other", *r.storage[1:])),
    "tag subclass": lambda r: r._replace(storage=(Text("storage"), *r.storage[1:])),
    "kind other": lambda r: r._replace(storage=(r.storage[0], "FloatStorage", *r.storage[2:])),
    "key leading zero": lambda r: r._replace(storage=(*r.storage[:2], "0" + r.storage[2], *r.storage[3:])),
    "key subclass": lambda r: r._replace(storage=(*r.storage[:2], Text(r.storage[2]), *r.storage[3:])),
    "key past the records": lambda r: r._replace(storage=(*r.storage[:2], "99999", *r.storage[3:])),
    "numel other": lambda r: r._replace(storage=(*r.storage[:4], r.storage[4] + 1)),
    "numel huge": lambda r: r._replace(storage=(*r.storage[:4], 2**80)),
    "location int": lambda r: r._replace(storage=(*r.storage[:3], 0, r.storage[4])),
    "dtype unknown": lambda r: r._replace(dtype="float32"),
    "not contiguous": lambda r: r._replace(stride=tuple(reversed(r.stride))) if len(r.size) > 1 else r._replace(size=(1,)),
    "past its record": lambda r: r._replace(offset=r.storage[4]),
}  # fmt: skip


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_damaged_tensor_arguments_resolve_the_same_with_either_loops(checkpoints, monkeypatch, mutation):
    change = MUTATIONS[mutation]
    for path in checkpoints[:2]:
        rebuilt, keys, records = _rebuilt_of(path)
        for i in sorted({0, len(rebuilt) // 2, len(rebuilt) - 1}):
            damaged = [*rebuilt[:i], change(rebuilt[i]), *rebuilt[i + 1 :]]

            def resolve(damaged: list[Rebuilt] = damaged) -> Any:
                return _normalised(_fast_torch_zip._resolve(damaged, keys, records, refs=True))

            with_c, with_python = _both(monkeypatch, resolve)
            assert with_c == with_python, (path.name, i)


def test_two_ids_of_one_storage_must_agree(checkpoints, monkeypatch):
    rebuilt, keys, records = _rebuilt_of(checkpoints[1])
    shared = [i for i, r in enumerate(rebuilt) if r.storage[2] == rebuilt[0].storage[2]]
    assert len(shared) > 1  # views of one storage
    other = StorageType(_fast_torch_zip.DTYPES["float64"])
    damaged = list(rebuilt)
    damaged[shared[1]] = rebuilt[shared[1]]._replace(storage=(*rebuilt[0].storage[:1], other, *rebuilt[0].storage[2:]))
    with_c, with_python = _both(monkeypatch, lambda: _fast_torch_zip._resolve(damaged, keys, records, refs=True))
    assert with_c == with_python == ("declined", _fast_torch_zip.Reason.STORAGE_ID)


def test_labels_that_are_not_text_become_empty(checkpoints, monkeypatch):
    rebuilt, keys, records = _rebuilt_of(checkpoints[1])
    labels = [7 if i == 0 else key for i, key in enumerate(keys)]
    with_c, with_python = _both(
        monkeypatch, lambda: _normalised(_fast_torch_zip._resolve(rebuilt, labels, records, refs=True)))
    assert with_c == with_python and with_c[1][0][1] == ""


# ---- the rebuild stub -----------------------------------------------------------------------


def test_the_packer_keeps_its_arguments_and_nothing_else():
    pack = fast.packer(Rebuilt, 6, 8)
    made = pack("s", 0, (2,), (1,), False, None)
    assert type(made) is Rebuilt and made == ("s", 0, (2,), (1,), False, None, None, None)
    with pytest.raises(TypeError, match="6 positional"):
        pack("s", 0, (2,), (1,), False, None, {"conj": True})  # torch's optional metadata
    with pytest.raises(TypeError, match="keyword"):
        pack("s", 0, (2,), (1,), False, hooks=None)
    with pytest.raises(AttributeError):
        pack.__dict__ = {}
    with pytest.raises(ValueError):
        fast.packer(dict, 1, 1)


def test_a_bare_packer_in_a_pickle_is_refused(tmp_path):
    pickled = b"\x80\x02}X\x01\x00\x00\x00fctorch._utils\n_rebuild_tensor_v2\ns."
    with pytest.raises(Declined, match="bare Packer"):
        record_places(unpickle(pickled, torch_policy(torch_dtypes=False)))


def test_the_version_says_which_loops_the_reader_has():
    run = subprocess.run([sys.executable, "-m", "normscope", "--version"], capture_output=True, text=True, check=True)
    assert "torch zip reader loops: active" in run.stdout
    off = subprocess.run([sys.executable, "-m", "normscope", "--version"], capture_output=True, text=True,
                         check=True, env={**os.environ, _speedups.DISABLE_VARIABLE: "1"})  # fmt: skip
    assert "torch zip reader loops: off" in off.stdout


CHILD = """
import sys
import numpy as np
from normscope.sources import _fast_torch_zip, _speedups, _zipdir
from normscope.sources._refs import MappedTensorRef

def _normalised(value):
    if type(value) is MappedTensorRef:
        return (value.name, value.shape, value.dtype, value.numel, value.address - value.archive.base,
                value.record, value.offset, value.stride)
    if isinstance(value, dict):
        return (type(value), [(k, _normalised(v)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value), [_normalised(v) for v in value])
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, value.strides, value.tobytes())
    return "nan" if isinstance(value, float) and value != value else value

outcomes = []
for loops in (_speedups.torchzip, None):
    _speedups.torchzip = loops
    _zipdir._zip_facts.cache_clear()
    outcomes.append([_normalised(_fast_torch_zip.scan_torch_zip(p)) for p in sys.argv[1:]])
assert "torch" not in sys.modules, "the scan imported torch"
print("same" if outcomes[0] == outcomes[1] else "differ")
"""


def test_without_torch_the_scan_is_the_same_with_either_loops(checkpoints):
    # without torch, dtypes are the reader's own tokens and small tensors numpy arrays
    run = subprocess.run([sys.executable, "-c", CHILD, *map(str, checkpoints)], capture_output=True,
                         text=True, cwd=Path(__file__).parent, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "same"
