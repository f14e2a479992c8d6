"""The loader of `torch.save` files: the fast reader where it reads the file, torch.load where not.

No code from a checkpoint ever runs here. A torch.save zip is read by `_fast_torch_zip` (the C
unpickler under an allow-list policy, ~10x sooner than torch.load); whatever that reader declines
goes to `torch.load(weights_only=True)`, whose unpickler refuses anything that is not a tensor,
container or primitive, and which then decides alone. Each file the fast reader declines is logged
at DEBUG level with its `Reason`, and counted: `-v` prints the count and the reasons once, at the
end (`log_fallbacks`), so a torch upgrade that breaks the fast reader is seen. Refused globals are
named by disassembling the pickle (never by executing it).
"""

from __future__ import annotations

import enum
import logging
import os
import pickle
import pickletools
import warnings
from collections import Counter
from typing import Any

from normscope.errors import BadInputError, UnsafeCheckpointError

from ._fast_torch_zip import load_torch_zip_fast, scan_torch_zip
from ._restricted_torch import load_torch_zip_restricted
from ._unpickle import Declined, Reason
from ._zipdir import zip_end_missing, zip_facts

log = logging.getLogger(__name__)

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = 0x80  # protocol >= 2 pickles start with PROTO


class Failure(enum.Enum):
    """Why a torch file cannot be read, each with the error the user sees (exit code 2)."""

    UNREADABLE = (BadInputError, "cannot read {path}: {detail}")
    DIRECTORY = (BadInputError, "{path} is a directory, expected a file")
    TORCHSCRIPT = (UnsafeCheckpointError, "{path} is a TorchScript archive (a program, not a checkpoint); "
                   "normscope reads only tensors — save the model's state_dict instead")
    MISNAMED = (BadInputError, "{path} is a torch.save file named .safetensors; rename it to .pt")
    NEEDS_CODE = (UnsafeCheckpointError, "{path} needs code to load ({detail}); normscope never runs "
                  "code from a checkpoint — {remedy}")
    REFUSED = (BadInputError, "{path} is not a readable torch checkpoint: {detail}")
    CORRUPT = (BadInputError, "{path} is not a readable torch checkpoint (truncated or corrupt?): {detail}")
    NOT_RECOVERED = (BadInputError, "{path} could not be recovered with the restricted unpickler: {detail}")

    def error(self, path: str, detail: str = "", remedy: str = "") -> BadInputError:
        """The user-facing error, its message filled in."""
        kind, text = self.value
        return kind(text.format(path=path, detail=detail, remedy=remedy))


_RECOVERABLE = ("--recover-unsafe (recover_unsafe=True) reads its tensors with a restricted unpickler "
                "that runs nothing and leaves those objects inert")  # fmt: skip
_RESAVE = "re-save it as a zip torch.save file, a plain state_dict or safetensors"


def read_head(path: str, n: int = 16) -> bytes:
    """The first bytes of a file.

    Raises:
        BadInputError: it cannot be read (missing, permission denied, a directory).
    """
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except PermissionError:
        raise Failure.UNREADABLE.error(path, "permission denied") from None
    except IsADirectoryError:
        raise Failure.DIRECTORY.error(path) from None
    except OSError as exc:
        raise Failure.UNREADABLE.error(path, str(exc.strerror or exc)) from None


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
    """A file `load_torch_file` reads: a torch.save zip or a legacy torch pickle."""
    return os.path.isfile(path) and (is_torch_zip(path) or is_pickle(path))


def is_torchscript(path: str) -> bool:
    """TorchScript archives hold code (`code/`, `constants.pkl`); torch.load would run them."""
    return zip_facts(path).torchscript


def zip_pickle_bytes(path: str) -> bytes | None:
    """The raw `data.pkl` of a torch zip (small: tensor data lives in other records), or None."""
    return zip_facts(path).pickle


def _legacy_globals(path: str) -> list[str]:
    """Globals named in a non-zip pickle stream, found by disassembly (nothing is executed)."""
    from torch import _weights_only_unpickler as wou  # lazy: only a refused legacy file needs it

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
    """The globals torch's safe unpickler refuses in `path` (found without running the pickle)."""
    import torch  # lazy: only a file torch.load has refused gets here

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
    try:
        obj, placeholders = load_torch_zip_restricted(path)
    except UnsafeCheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - an unusual or damaged archive: one line
        raise Failure.NOT_RECOVERED.error(path, _first_line(exc)) from None
    if notes is not None:
        notes.append(f"{path}: tensors read with the restricted unpickler; left inert: "
                     f"{', '.join(placeholders)}")  # fmt: skip
    return obj


# What -v reports at the end: files read, and those the fast reader left to torch.load (or read
# without in-place refs), by reason.
READ: Counter[str] = Counter()
BY_TORCH_LOAD: Counter[Reason | None] = Counter()
WITHOUT_REFS: Counter[Reason] = Counter()


def load_torch_file(
    path: str, *, recover_unsafe: bool = False, notes: list[str] | None = None,
    refs: bool = False,
) -> Any:
    """`torch.load` with weights_only (always) and mmap (zip files), or the fast reader's same object.

    Args:
        path: a torch.save zip or a legacy torch file.
        recover_unsafe: a zip file that weights_only refuses is read again by the restricted
            unpickler (`_restricted_torch`): the tensors come back, other objects stay inert
            placeholders, and a line in `notes` names what was not loaded.
        notes: where that line goes.
        refs: leave the floating-point tensors as `MappedTensorRef`s where the fast reader can
            (nothing built, read in place by the engine); callers that ask for them must take
            refs wherever they take tensors.

    Returns:
        The loaded object.

    Raises:
        BadInputError: a `Failure`, in its one line (UnsafeCheckpointError where code would run).
    """
    read_head(path, 1)  # permission and existence errors as one line
    is_zip = read_head(path, 4) == ZIP_MAGIC
    if is_zip and is_torchscript(path):
        raise Failure.TORCHSCRIPT.error(path)
    if path.endswith(".safetensors"):  # torch.load would hand it to the safetensors reader
        raise Failure.MISNAMED.error(path)
    READ["torch"] += 1
    declined: list[Declined] = []
    if is_zip:
        result = _read_fast(path, refs=refs, declined=declined)
        if result is not _TORCH_LOAD:
            return result
    # a file torch.load reads but the fast reader did not: slower (torch.load builds every
    # tensor, ~10x the time)
    BY_TORCH_LOAD[declined[-1].reason if declined else (Reason.LEGACY if not is_zip else None)] += 1
    return _torch_load(path, is_zip, recover_unsafe, notes)


def _torch_load(path: str, is_zip: bool, recover_unsafe: bool, notes: list[str] | None) -> Any:
    import torch  # lazy: the fast reader needs no torch for a file it reads in place

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
            raise Failure.NEEDS_CODE.error(path, ", ".join(names), _RECOVERABLE if is_zip else _RESAVE) from None
        if not is_zip and not is_pickle(path):  # torch's words would be about an opcode of it
            raise Failure.REFUSED.error(path, neither_zip_nor_pickle(path)) from None
        raise Failure.REFUSED.error(path, _weights_only_reason(exc)) from None
    except Exception as exc:  # noqa: BLE001 - truncated zips, bad records, …: one line each
        # torch says only "[Errno 22] Invalid argument" of a zip whose end was cut off
        detail = _CUT_ZIP if is_zip and zip_end_missing(path) else _first_line(exc)
        raise Failure.CORRUPT.error(path, detail) from None




def neither_zip_nor_pickle(path: str) -> str:
    """Why a file that starts with neither is no torch file, showing its first bytes."""
    shown = " ".join(f"{b:02x}" for b in read_head(path, 4))
    return f"it starts with neither a zip archive nor a pickle (first bytes {shown}), as torch.save files do"


_CUT_ZIP = "its zip archive has no end record, so the end of the file is missing (a copy or a save cut short)"


_TORCH_LOAD = object()  # the fast reader's answer where torch.load must read the file


def _read_fast(path: str, *, refs: bool, declined: list[Declined]) -> Any:
    """The object the fast reader builds (with `refs`, in-place refs first), or `_TORCH_LOAD`;
    each reading it declines adds its `Declined` to `declined`, logged at DEBUG level."""
    for reader in ((scan_torch_zip,) if refs else ()) + (load_torch_zip_fast,):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                result = reader(path)
        except Declined as exc:
            declined.append(exc)
        # a damaged pickle or record, or a torch internal that changed: torch.load decides
        except Exception as exc:  # noqa: BLE001 - counted and logged under its reason
            declined.append(Declined(Reason.FAILED, f"{type(exc).__name__}: {_first_line(exc)}"))
        else:
            if declined:
                WITHOUT_REFS[declined[-1].reason] += 1
            return result
        log.debug("%s: %s declined: %s", path, reader.__name__, declined[-1])
    return _TORCH_LOAD


def fallback_summary() -> str | None:
    """One line: how many torch files were read, how many by torch.load and why; None if none."""

    def by_reason(counts: Counter[Any]) -> str:
        named = ", ".join(f"{'no reason given' if r is None else r.value}: {n}" for r, n in counts.most_common())
        return f" (reasons: {named})" if named else ""

    if not READ:
        return None
    line = f"torch files read by torch.load: {sum(BY_TORCH_LOAD.values())} of {READ['torch']}"
    if WITHOUT_REFS:
        line += f"{by_reason(BY_TORCH_LOAD)}; read without in-place refs: {sum(WITHOUT_REFS.values())}"
        return line + by_reason(WITHOUT_REFS)
    return line + by_reason(BY_TORCH_LOAD)


def log_fallbacks() -> None:
    """Log `fallback_summary()` at INFO level (what `-v` shows), if any torch file was read."""
    if READ:
        log.info(fallback_summary())
