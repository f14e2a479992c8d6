"""Reading `torch.save` files safely: weights_only always, mmap when the file is a zip.

No code from a checkpoint ever runs here: torch's weights_only unpickler refuses anything that is
not a tensor, container or primitive, and we name the refused globals by disassembling the pickle
(never by executing it).
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import pickletools
import warnings
import zipfile
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, BinaryIO

from normscope.errors import BadInputError, UnsafeCheckpointError

from ._zipdir import Directory, read_directory, read_member

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = 0x80  # protocol >= 2 pickles start with PROTO


def read_head(path: str, n: int = 16) -> bytes:
    """The first bytes of a file, or a BadInputError naming why it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except PermissionError:
        raise BadInputError(f"cannot read {path}: permission denied") from None
    except IsADirectoryError:
        raise BadInputError(f"{path} is a directory, expected a file") from None
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc.strerror or exc}") from None


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


def is_torch_zip(path: str) -> bool:
    """A `torch.save` zip archive: zip magic and a `<archive>/data.pkl` record."""
    if read_head(path, 4) != ZIP_MAGIC:
        return False
    facts = zip_facts(path)
    # A truncated torch zip loses its central directory; still claim it so the user hears
    # "truncated torch checkpoint" rather than "unknown file type".
    return facts.has_pickle or not facts.readable


def is_pickle(path: str) -> bool:
    """A legacy (pre-1.6, non-zip) torch file or any protocol-2+ pickle."""
    head = read_head(path, 2)
    return len(head) == 2 and head[0] == PICKLE_PROTO and 2 <= head[1] <= 5


def sniff_torch_file(path: str) -> bool:
    return os.path.isfile(path) and (is_torch_zip(path) or is_pickle(path))


def is_torchscript(path: str) -> bool:
    """TorchScript archives hold code (`code/`, `constants.pkl`); torch.load would run them."""
    return zip_facts(path).torchscript


def zip_pickle_bytes(path: str) -> bytes | None:
    """The raw `data.pkl` of a torch zip (small: tensor data lives in other records), or None."""
    return zip_facts(path).pickle


def _legacy_globals(path: str) -> list[str]:
    """Globals named in a non-zip pickle stream, found by disassembly (nothing is executed)."""
    from torch import _weights_only_unpickler as wou

    allowed = set(wou._get_allowed_globals()) | set(wou._get_user_allowed_globals())
    found: set[str] = set()
    with open(path, "rb") as f:
        # legacy torch files: magic, protocol, sys info, then the object
        for _ in range(4):
            strings: list[str] = []
            try:
                for op, arg, _pos in pickletools.genops(f):
                    if op.name == "GLOBAL":
                        found.add(str(arg).replace(" ", "."))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.add(f"{strings[-2]}.{strings[-1]}")
                    elif isinstance(arg, str):
                        strings.append(arg)
            except Exception:  # noqa: BLE001 - end of stream or raw tensor bytes after the pickles
                break
    return sorted(found - allowed)


def unsafe_globals(path: str) -> list[str]:
    import torch

    try:
        if read_head(path, 4) == ZIP_MAGIC:
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        return _legacy_globals(path)
    except Exception:  # noqa: BLE001 - naming them is a courtesy; the refusal stands regardless
        return []


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _weights_only_reason(exc: BaseException) -> str:
    """What torch's safe unpickler found wrong, without its opening paragraph's advice to load
    the file with `weights_only=False` (which would run whatever code the file holds)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines or not lines[0].startswith("Weights only load failed"):
        return _first_line(exc)
    marker = "WeightsUnpickler error:"
    text = "\n".join(lines)
    if marker in text:
        reason = text.split(marker, 1)[1].strip().split("\n", 1)[0]
    else:
        reason = lines[1] if len(lines) > 1 else ""
    refused = "its pickle is refused by torch's safe loader"
    return f"{refused} ({reason})" if reason else refused


def _recover(path: str, notes: list[str] | None) -> Any:
    from ._restricted_torch import load_torch_zip_restricted

    try:
        obj, placeholders = load_torch_zip_restricted(path)
    except UnsafeCheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt in some other way: one line
        raise BadInputError(
            f"{path} could not be recovered with the restricted unpickler: {_first_line(exc)}"
        ) from None
    if notes is not None:
        notes.append(
            f"{path}: tensors read with the restricted unpickler; left inert: "
            f"{', '.join(placeholders)}"
        )
    return obj


def load_torch_file(
    path: str, *, recover_unsafe: bool = False, notes: list[str] | None = None,
    refs: bool = False,
) -> Any:
    """`torch.load` with weights_only (always) and mmap (zip files); one-line errors otherwise.

    A torch.save zip is first read by `_fast_torch_zip` (the same object, ~10x sooner); whatever
    that path declines or fails on goes to torch.load, which then decides alone. With `refs`,
    that path first tries to leave the floating-point tensors as `MappedTensorRef`s
    (`scan_torch_zip`: nothing built, read in place by the engine); callers that ask for them
    must take refs wherever they take tensors.

    With `recover_unsafe`, a zip file that weights_only refuses is read again by the restricted
    unpickler (`_restricted_torch`): the tensors come back, other objects stay inert placeholders,
    and a line in `notes` names what was not loaded.
    """
    import torch

    read_head(path, 1)  # permission and existence errors as one line
    is_zip = read_head(path, 4) == ZIP_MAGIC
    if is_zip and is_torchscript(path):
        raise UnsafeCheckpointError(
            f"{path} is a TorchScript archive (a program, not a checkpoint); normscope reads only "
            "tensors — save the model's state_dict instead"
        )
    # torch.load would hand a file with this name to the safetensors reader
    if path.endswith(".safetensors"):
        raise BadInputError(
            f"{path} is a torch.save file named .safetensors; rename it to .pt"
        )
    if is_zip:
        # Declined, or failed in any way: torch.load reads it, or refuses it in its own words
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            from ._fast_torch_zip import load_torch_zip_fast
            from ._scan_torch_zip import scan_torch_zip

            if refs:
                with contextlib.suppress(Exception):
                    return scan_torch_zip(path)
            return load_torch_zip_fast(path)
    try:
        # torch's notes on pickle protocols are not for our users
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, weights_only=True, mmap=is_zip, map_location="cpu")
    except pickle.UnpicklingError as exc:
        names = unsafe_globals(path)
        if names and recover_unsafe and is_zip:
            return _recover(path, notes)
        if names:
            recover = (
                "--recover-unsafe (recover_unsafe=True) reads its tensors with a restricted unpickler "
                "that runs nothing and leaves those objects inert"
                if is_zip else "re-save it as a zip torch.save file, a plain state_dict or safetensors"
            )
            raise UnsafeCheckpointError(
                f"{path} needs code to load ({', '.join(names)}); normscope never runs code from "
                f"a checkpoint — {recover}"
            ) from None
        raise BadInputError(
            f"{path} is not a readable torch checkpoint: {_weights_only_reason(exc)}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - truncated zips, bad records, …: one line each
        raise BadInputError(
            f"{path} is not a readable torch checkpoint (truncated or corrupt?): {_first_line(exc)}"
        ) from None


# -- taking a loaded checkpoint apart -------------------------------------------------------------

MODEL_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "model_state",
              "weights", "params", "params_ema")  # fmt: skip
OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optimizer_state", "optim")
# nanoGPT's `iter_num`, DeepSpeed's `global_steps`
STEP_KEYS = ("global_step", "step", "iteration", "iter", "num_updates", "iter_num", "global_steps")
EPOCH_KEYS = ("epoch",)


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if _is_tensor(value) and value.numel() == 1:
        return value.item()
    return None


def split_checkpoint(
    obj: Any, path: str, is_tensor: Callable[[Any], bool] = _is_tensor
) -> tuple[Mapping[str, Any], Any, int | None, float | None]:
    """(model state_dict, optimizer state_dict or None, embedded step, embedded epoch).

    `is_tensor` tells tensors (or lazy refs standing for them) from other values.
    """

    def _tensor_dict(value: Any) -> bool:
        return isinstance(value, Mapping) and any(is_tensor(v) for v in value.values())

    if not isinstance(obj, Mapping):
        if is_tensor(obj):
            raise BadInputError(f"{path} holds a single tensor, not a state_dict")
        raise BadInputError(f"{path} holds a {type(obj).__name__}, not a state_dict")
    if all(is_tensor(v) for v in obj.values()) and obj:
        return obj, None, None, None
    model: Mapping[str, Any] | None = None
    for key in MODEL_KEYS:
        value = obj.get(key)
        if _tensor_dict(value):
            model = value
            break
        # one more level, e.g. {"model": {"state_dict": ...}}
        if isinstance(value, Mapping):
            inner = next(
                (value[k] for k in MODEL_KEYS if _tensor_dict(value.get(k))), None
            )
            if inner is not None:
                model = inner
                break
    if model is None:
        tensors = {k: v for k, v in obj.items() if is_tensor(v)}
        if not tensors:
            keys = ", ".join(sorted(map(str, obj))[:8])
            raise BadInputError(f"{path} has no model tensors (top-level keys: {keys})")
        model = tensors
    optimizer = next(
        (obj[k] for k in OPTIMIZER_KEYS if isinstance(obj.get(k), Mapping)), None
    )
    if optimizer is None and isinstance(obj.get("optimizer_states"), (list, tuple)):
        states = obj["optimizer_states"]
        optimizer = states[0] if states and isinstance(states[0], Mapping) else None
    step = next(
        (_number(obj[k]) for k in STEP_KEYS if _number(obj.get(k)) is not None), None
    )
    epoch = next(
        (_number(obj[k]) for k in EPOCH_KEYS if _number(obj.get(k)) is not None), None
    )
    return model, optimizer, None if step is None else int(step), epoch
