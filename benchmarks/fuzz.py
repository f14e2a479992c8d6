"""Fuzz normscope with damaged copies of real checkpoints and logs, each read in its own process.

    nice python benchmarks/fuzz.py --per-format 10000 --seed 1 --findings /tmp/normscope-fuzz

Bases are real files: the committed sample runs (a plain `torch.save` .pt, a Lightning .ckpt, an
HF Trainer checkpoint with `model.safetensors`, the tracker's JSON Lines log) and small real saves
made here from them (an HF `pytorch_model.bin` checkpoint, a sharded safetensors index, a
`torch.distributed.checkpoint` directory, TensorBoard event files written by torch's
SummaryWriter). Each input is a copy of one base with one file damaged by one mutator:

    bitflip     1-8 random bits flipped
    bytes       1-8 random bytes overwritten
    insert      1-64 random bytes inserted
    delete      1-64 bytes removed
    truncate    the file cut at a random length
    duplicate   a chunk copied to another place
    field       a structural field rewritten with an interesting value: safetensors JSON header
                fields (dtype, shape, data_offsets, length), zip local / central / end-of-directory
                header fields, integers inside a pickle, JSONL header and record fields,
                TensorBoard record lengths

Each input is read in a forked child with a wall-clock limit and an address-space cap (the
parent's size plus `--memory-mib`); the child calls `normscope.load_trajectory` (the API) or runs
`normscope analyze` (any format; for logs also `watch --once`) in-process (the CLI, stdout and
stderr sent to files). An outcome is:

    ok        the API returned / the CLI exited 0
    error     a NormscopeError with a one-line message / exit 2 with exactly one stderr line
    signal    the child died of a signal (SIGSEGV, SIGBUS, ...)
    timeout   the child ran past the limit and was killed
    exit101   the CLI exited 101 (an internal error)
    crash     any other exception from the API, exit code, a traceback or a multi-line error
    modified  the input's files changed while normscope read them

Peak memory is the child's largest resident set (ru_maxrss) above what it had just after the fork,
so it counts what reading the input allocated and touched, library pages included. Inputs that fail
are written under `--findings` with a JSON line saying how to rebuild them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import faulthandler
import hashlib
import io
import json
import os
import random
import re
import resource
import select
import shutil
import signal
import struct
import sys
import tempfile
import time
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_RUNS = REPO_ROOT / "sample_runs"
FORMATS = ("torch", "safetensors", "dcp", "jsonl", "tensorboard")
MUTATORS = ("bitflip", "bytes", "insert", "delete", "truncate", "duplicate", "field")
OUTCOMES = ("ok", "error", "signal", "timeout", "exit101", "crash", "modified")
FAILURES = frozenset(OUTCOMES) - {"ok", "error"}
DEFAULT_TIMEOUT_S = 20.0
DEFAULT_MEMORY_MIB = 1024


# ---------------------------------------------------------------- bases


@dataclasses.dataclass(frozen=True)
class Base:
    """One real input: `root` is what normscope is pointed at, `targets` the files to damage."""

    format: str
    name: str
    root: str  # relative to the bases directory
    targets: tuple[str, ...]  # relative to the bases directory


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _torch_bases(out: Path) -> list[Base]:
    import torch

    sgd = SAMPLE_RUNS / "digits_bn_cnn_sgd"
    _copy(sgd / "epoch_001.pt", out / "pt" / "epoch_001.pt")
    # two snapshots: the second is read against the first (dots, diffs, momentum buffers)
    _copy(sgd / "epoch_001.pt", out / "pt_pair" / "epoch_001.pt")
    _copy(sgd / "epoch_002.pt", out / "pt_pair" / "epoch_002.pt")
    lightning = SAMPLE_RUNS / "digits_bn_cnn_lightning"
    _copy(lightning / "epoch=1-step=46.ckpt", out / "ckpt" / "epoch=1-step=46.ckpt")
    # an HF Trainer checkpoint that saved `pytorch_model.bin` (save_safetensors=False)
    from safetensors.torch import load_file

    hf_src = SAMPLE_RUNS / "digits_ln_transformer_adamw" / "checkpoint-23"
    hf = out / "hf_bin" / "checkpoint-23"
    hf.mkdir(parents=True)
    torch.save(load_file(hf_src / "model.safetensors"), hf / "pytorch_model.bin")
    for name in ("trainer_state.json", "optimizer.pt", "scheduler.pt"):
        _copy(hf_src / name, hf / name)
    return [
        Base("torch", "pt", "pt/epoch_001.pt", ("pt/epoch_001.pt",)),
        Base("torch", "pt-pair", "pt_pair", ("pt_pair/epoch_002.pt",)),
        Base("torch", "lightning-ckpt", "ckpt/epoch=1-step=46.ckpt", ("ckpt/epoch=1-step=46.ckpt",)),
        Base("torch", "hf-pytorch_model.bin", "hf_bin/checkpoint-23",
             ("hf_bin/checkpoint-23/pytorch_model.bin", "hf_bin/checkpoint-23/optimizer.pt",
              "hf_bin/checkpoint-23/trainer_state.json")),
    ]


def _safetensors_bases(out: Path) -> list[Base]:
    from safetensors.torch import load_file, save_file

    runs = SAMPLE_RUNS / "digits_ln_transformer_adamw"
    _copy(runs / "checkpoint-23" / "model.safetensors", out / "st" / "model.safetensors")
    hf = out / "hf_st" / "checkpoint-46"
    for name in ("model.safetensors", "trainer_state.json"):
        _copy(runs / "checkpoint-46" / name, hf / name)
    # the same weights as two shards and an index, as `save_pretrained(max_shard_size=...)` writes
    tensors = load_file(runs / "checkpoint-23" / "model.safetensors")
    names = sorted(tensors)
    sharded = out / "st_sharded"
    sharded.mkdir(parents=True)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        shard = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: tensors[k].contiguous() for k in part}, sharded / shard, metadata={"format": "pt"})
        weight_map.update({k: shard for k in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return [
        Base("safetensors", "safetensors", "st/model.safetensors", ("st/model.safetensors",)),
        Base("safetensors", "hf-model.safetensors", "hf_st/checkpoint-46",
             ("hf_st/checkpoint-46/model.safetensors", "hf_st/checkpoint-46/model.safetensors",
              "hf_st/checkpoint-46/trainer_state.json")),
        Base("safetensors", "sharded-index", "st_sharded",
             ("st_sharded/model.safetensors.index.json", "st_sharded/model-00001-of-00002.safetensors",
              "st_sharded/model-00002-of-00002.safetensors")),
    ]


def _dcp_bases(out: Path) -> list[Base]:
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    state = torch.load(SAMPLE_RUNS / "digits_bn_cnn_sgd" / "epoch_001.pt", weights_only=True)
    step = out / "dcp" / "step_23"
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process"
        warnings.simplefilter("ignore")
        dcp.save({"model": state["model"], "optimizer": state["optimizer"], "step": 23},
                 checkpoint_id=str(step))
    files = sorted(p.relative_to(out).as_posix() for p in step.iterdir() if p.is_file())
    return [Base("dcp", "dcp", "dcp/step_23", tuple(files))]


def _jsonl_lines(records: int) -> list[str]:
    lines = []
    with open(SAMPLE_RUNS / "digits_bn_cnn_live" / "track.jsonl") as f:
        for line in f:
            lines.append(line)
            if len(lines) > records:
                break
    return lines


def _jsonl_bases(out: Path) -> list[Base]:
    path = out / "jsonl" / "track.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(_jsonl_lines(40)))
    return [Base("jsonl", "track.jsonl", "jsonl/track.jsonl", ("jsonl/track.jsonl",))]


def _tensorboard_bases(out: Path) -> list[Base]:
    import math

    from torch.utils.tensorboard import SummaryWriter

    lines = _jsonl_lines(30)
    header = json.loads(lines[0])
    names = [p["name"] for p in header["params"]]
    logdir = out / "tb" / "version_0"
    writer = SummaryWriter(str(logdir))
    for line in lines[1:]:
        record = json.loads(line)
        step = record["step"]
        writer.add_scalar("epoch", record.get("epoch") or 0.0, step)
        writer.add_scalar("lr-SGD", (record.get("groups") or [{}])[0].get("lr", 0.2), step)
        for name, g_sq, w_sq in zip(names, record["g_sq"], record["w_sq"]):
            writer.add_scalar(f"grad_2.0_norm/{name}", math.sqrt(g_sq) if g_sq is not None else 0.0, step)
            writer.add_scalar(f"weight_norm/{name}", math.sqrt(w_sq) if w_sq is not None else 0.0, step)
    writer.close()
    files = sorted(p.relative_to(out).as_posix() for p in logdir.iterdir())
    return [Base("tensorboard", "tfevents", "tb", tuple(files))]


BASE_BUILDERS: dict[str, Callable[[Path], list[Base]]] = {
    "torch": _torch_bases,
    "safetensors": _safetensors_bases,
    "dcp": _dcp_bases,
    "jsonl": _jsonl_bases,
    "tensorboard": _tensorboard_bases,
}


def build_bases(out: Path, formats: tuple[str, ...] = FORMATS) -> dict[str, list[Base]]:
    out.mkdir(parents=True, exist_ok=True)
    return {fmt: BASE_BUILDERS[fmt](out) for fmt in formats}


# ---------------------------------------------------------------- mutators

INTERESTING_INTS = (
    0, 1, -1, 2, 7, 8, 255, 256, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
    2**32, 2**40, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**31), -(2**63),
)


def _interesting_int(rng: random.Random, near: int | None = None) -> int:
    if near is not None and rng.random() < 0.3:
        return near + rng.choice((-1, 1, -8, 8, near, -near, 4096))
    return rng.choice(INTERESTING_INTS)


def bitflip(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def overwrite_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def insert(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.randbytes(rng.randint(1, 64)) + data[at:]


def delete(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data))
    return data[:at] + data[at + rng.randint(1, 64):]


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


def duplicate(data: bytes, rng: random.Random) -> bytes:
    start = rng.randrange(len(data))
    chunk = data[start: start + rng.randint(1, max(1, min(4096, len(data) // 4)))]
    at = rng.randrange(len(data) + 1)
    return data[:at] + chunk + data[at:]


def _safetensors_field(data: bytes, rng: random.Random) -> bytes:
    if len(data) < 8:
        return overwrite_bytes(data, rng)
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8: 8 + n])
    except (ValueError, UnicodeDecodeError, MemoryError, OverflowError):
        return bitflip(data, rng)
    body = data[8 + n:]
    names = [k for k in header if k != "__metadata__"] or ["x"]
    name = rng.choice(names)
    entry = header.get(name) if isinstance(header.get(name), dict) else {}
    choice = rng.randrange(9)
    if choice == 0:
        entry["dtype"] = rng.choice(("F64", "BF16", "F16", "I64", "U8", "BOOL", "F8_E4M3", "Q4", "", 7, None))
    elif choice == 1:
        shape = list(entry.get("shape") or [1])
        shape[rng.randrange(len(shape))] = _interesting_int(rng)
        entry["shape"] = shape
    elif choice == 2:
        entry["shape"] = rng.choice(([], [0], [2**32, 2**32], [2**64], "4", [1.5], None, [[3]], [-4, -4]))
    elif choice == 3:
        offsets = list(entry.get("data_offsets") or [0, 0])
        offsets[rng.randrange(2)] = _interesting_int(rng, offsets[0])
        entry["data_offsets"] = offsets
    elif choice == 4:
        entry["data_offsets"] = rng.choice(([5, 1], [0], [0, 1, 2], "0", None, [0.5, 8], [-8, 0]))
    elif choice == 5:
        entry.pop(rng.choice(("dtype", "shape", "data_offsets")), None)
    elif choice == 6:
        header["__metadata__"] = rng.choice(({"format": "pt"}, {"step": "1e400"}, [], "x", {"a": {"b": 1}}))
    elif choice == 7:  # another tensor's entry under this name: overlapping data
        other = header.get(rng.choice(names))
        if isinstance(other, dict):
            entry = dict(other)
    if choice != 8:
        header[name] = entry
    text = json.dumps(header).encode()
    length = len(text)
    if choice == 8 or rng.random() < 0.15:
        length = _interesting_int(rng, length) % 2**64
    return struct.pack("<Q", length) + text + body


_ZIP_RECORDS = {  # signature -> (format of the fixed part, its size)
    b"PK\x03\x04": ("<4s5H3L2H", 30),
    b"PK\x01\x02": ("<4s6H3L5H2L", 46),
    b"PK\x05\x06": ("<4s4H2LH", 22),
    b"PK\x06\x06": ("<4sQ2H2L4Q", 56),
    b"PK\x06\x07": ("<4sLQL", 20),
}


def _zip_field(data: bytes, rng: random.Random) -> bytes:
    spots = [(i, sig) for sig in _ZIP_RECORDS for i in _find_all(data, sig)]
    if not spots:
        return bitflip(data, rng)
    at, sig = rng.choice(spots)
    fmt, size = _ZIP_RECORDS[sig]
    if at + size > len(data):
        return truncate(data, rng)
    fields = list(struct.unpack(fmt, data[at: at + size]))
    k = rng.randrange(1, len(fields))  # field 0 is the signature
    width = {"H": 16, "L": 32, "Q": 64}[_field_codes(fmt)[k]]
    fields[k] = _interesting_int(rng, fields[k]) % (1 << width)
    return data[:at] + struct.pack(fmt, *fields) + data[at + size:]


def _field_codes(fmt: str) -> list[str]:
    """One struct code per field: "<4s2H" -> ["s", "H", "H"]."""
    codes = []
    for count, code in re.findall(r"(\d*)([a-zA-Z])", fmt):
        codes += [code] if code == "s" else [code] * int(count or 1)
    return codes


def _find_all(data: bytes, needle: bytes) -> list[int]:
    out, i = [], data.find(needle)
    while i >= 0:
        out.append(i)
        i = data.find(needle, i + 1)
    return out


def _pickle_spans(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the pickles in `data`: the stored `*.pkl` members of a zip, or all of it."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            spans = []
            for info in zf.infolist():
                if info.filename.endswith(".pkl") and info.compress_type == zipfile.ZIP_STORED:
                    name_len, extra_len = struct.unpack("<2H", data[info.header_offset + 26: info.header_offset + 30])
                    start = info.header_offset + 30 + name_len + extra_len
                    spans.append((start, start + info.compress_size))
            return spans
    except Exception:  # noqa: BLE001 - not a zip, or a damaged one: treat it all as a pickle
        return [(0, len(data))]


def _pickle_int(data: bytes, rng: random.Random) -> bytes:
    """Rewrite one integer operand inside a pickle (storage offsets, sizes, strides, keys)."""
    import pickletools

    sites = []
    for start, end in _pickle_spans(data):
        try:
            for op, arg, pos in pickletools.genops(data[start:end]):
                if op.name in ("BININT", "BININT1", "BININT2", "LONG1") and pos is not None:
                    sites.append((start + pos, op.name, arg))
        except Exception:  # noqa: BLE001, S110 - a pickle already damaged: use what was parsed
            pass
    if not sites:
        return bitflip(data, rng)
    pos, name, value = rng.choice(sites)
    new = _interesting_int(rng, value if isinstance(value, int) else None)
    if name == "BININT1":
        old, packed = 2, b"J" + struct.pack("<i", max(-(2**31), min(2**31 - 1, new)))
    elif name == "BININT2":
        old, packed = 3, b"J" + struct.pack("<i", max(-(2**31), min(2**31 - 1, new)))
    elif name == "BININT":
        old, packed = 5, b"J" + struct.pack("<i", max(-(2**31), min(2**31 - 1, new)))
    else:
        n = data[pos + 1]
        old = 2 + n
        raw = new.to_bytes((new.bit_length() + 8) // 8 or 1, "little", signed=True)
        packed = b"\x8a" + bytes([len(raw)]) + raw
    # a changed length shifts the zip member's bytes: readers must cope with that as well
    return data[:pos] + packed + data[pos + old:]


JSON_VALUES = (
    "Infinity", "-Infinity", "NaN", "1e400", "-1e400", '"0.1"', '"x"', "null", "true", "[]", "{}",
    "-1", "0", "1.5", str(2**64), str(-(2**63)), "9" * 400, '"\\u0000"', '[[[[[[1]]]]]]',
    "[" * 100_000 + "]" * 100_000, '"' + "\\u001b]0;pwn\\u0007" + '"',
)


def _jsonl_field(data: bytes, rng: random.Random) -> bytes:
    lines = data.split(b"\n")
    candidates = [i for i, line in enumerate(lines) if line.strip()]
    if not candidates:
        return insert(data, rng)
    i = rng.choice(candidates[:1] * 4 + candidates)  # the header is hit often
    line = lines[i].decode("utf-8", "replace")
    value = rng.choice(JSON_VALUES)
    # find a `"key":` and replace what follows up to the next comma / bracket with `value`
    keys = _find_all(line.encode(), b'":')
    if not keys or rng.random() < 0.1:
        lines[i] = value.encode()
    else:
        at = rng.choice(keys) + 2
        rest = line[at:]
        depth, end = 0, 0
        for end, c in enumerate(rest):
            if c in "[{":
                depth += 1
            elif c in "]}":
                if depth == 0:
                    break
                depth -= 1
                if depth == 0 and rng.random() < 0.5:
                    end += 1
                    break
            elif c == "," and depth == 0:
                break
        else:
            end = len(rest)
        lines[i] = (line[:at] + value + rest[end:]).encode()
    return b"\n".join(lines)


def _tfrecord_field(data: bytes, rng: random.Random) -> bytes:
    """Rewrite one record's length (TFRecord framing: u64 length, u32 crc, data, u32 crc)."""
    spots, at = [], 0
    while at + 12 <= len(data):
        (n,) = struct.unpack("<Q", data[at: at + 8])
        spots.append(at)
        at += 12 + n + 4
    if not spots:
        return bitflip(data, rng)
    at = rng.choice(spots)
    (n,) = struct.unpack("<Q", data[at: at + 8])
    return data[:at] + struct.pack("<Q", _interesting_int(rng, n) % 2**64) + data[at + 8:]


def field(data: bytes, rng: random.Random, target: str) -> bytes:
    if not data:
        return data
    if target.endswith(".safetensors"):
        return _safetensors_field(data, rng)
    if target.endswith((".json", ".jsonl")):
        return _jsonl_field(data, rng)
    if "tfevents" in target:
        return _tfrecord_field(data, rng)
    if data[:2] == b"PK":
        return _zip_field(data, rng) if rng.random() < 0.5 else _pickle_int(data, rng)
    return _pickle_int(data, rng)  # DCP .metadata, legacy torch files


def mutate(data: bytes, mutator: str, rng: random.Random, target: str) -> bytes:
    if not data:
        return rng.randbytes(rng.randint(1, 64))
    if mutator == "field":
        return field(data, rng, target)
    return {"bitflip": bitflip, "bytes": overwrite_bytes, "insert": insert, "delete": delete,
            "truncate": truncate, "duplicate": duplicate}[mutator](data, rng)


# ---------------------------------------------------------------- one input, in a child


@dataclasses.dataclass(frozen=True)
class Case:
    format: str
    base: str
    target: str
    mutator: str
    seed: int
    mode: str  # "api" or "cli"


@dataclasses.dataclass
class Result:
    case: Case
    outcome: str
    detail: str
    peak_mib: float
    seconds: float


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _vm_size() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _child_api(path: str) -> tuple[str, str]:
    from normscope import load_trajectory
    from normscope.errors import NormscopeError

    try:
        load_trajectory(path, device="cpu")
    except NormscopeError as exc:
        message = str(exc)
        if not message or "\n" in message or "\r" in message:
            return "crash", f"NormscopeError message is not one line: {message[:300]!r}"
        return "error", message[:300]
    except BaseException as exc:  # noqa: BLE001 - this is what the fuzzer looks for
        return "crash", f"{type(exc).__name__}: {str(exc)[:300]}"
    return "ok", ""


def cli_args(case: Case, path: str) -> list[str]:
    """The command a CLI case runs: `analyze` in one of its formats, or for a log `watch --once`."""
    rng = random.Random(case.seed)
    if case.format in ("jsonl", "tensorboard") and rng.random() < 0.3:
        return ["watch", "--once", path]
    return ["analyze", path, "--device", "cpu", "--format", rng.choice(("table", "json", "csv"))]


def _child_cli(args: list[str], workdir: str) -> tuple[str, str]:
    out_fd = os.open(os.path.join(workdir, "stdout"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err_path = os.path.join(workdir, "stderr")
    err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), encoding="utf-8", write_through=True)
    sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), encoding="utf-8", write_through=True)
    from normscope.cli import app

    code: object = 0
    try:
        app(args=args, prog_name="normscope")
    except SystemExit as exc:
        code = exc.code if exc.code is not None else 0
    except BaseException as exc:  # noqa: BLE001
        return "crash", f"escaped the CLI: {type(exc).__name__}: {str(exc)[:300]}"
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    err = Path(err_path).read_text("utf-8", "replace")
    if code == 0:
        return ("crash", f"traceback on stderr: {err[-300:]!r}") if "Traceback" in err else ("ok", "")
    if code == 101:
        return "exit101", err.strip()[:300]
    if code == 2 and err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err:
        return "error", err.strip()[:300]
    return "crash", f"exit {code}, stderr {err[:300]!r}"


def _run_child(case: Case, path: str, workdir: str, timeout_s: float, memory_mib: int) -> tuple[str, str, float]:
    """(outcome, detail, peak MiB above the parent) of reading `path` in a forked child."""
    base_rss = _rss_kib()
    limit = _vm_size() + memory_mib * 2**20
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        status = 70
        try:
            os.close(read_fd)
            faulthandler.disable()  # a signal ends the child quietly; the parent reports it
            # fork leaves file-backed pages unmapped, so the child starts below the parent
            os.write(write_fd, f"{_rss_kib()}\n".encode())
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            if case.mode == "cli":
                outcome, detail = _child_cli(cli_args(case, path), workdir)
            else:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)
                outcome, detail = _child_api(path)
            os.write(write_fd, json.dumps([outcome, detail]).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    chunks, deadline, timed_out = [], time.monotonic() + timeout_s, False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([read_fd], [], [], left)
        if ready:
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    os.close(read_fd)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status, usage = os.wait4(pid, 0)
    first, _, rest = b"".join(chunks).partition(b"\n")
    with contextlib.suppress(ValueError):
        base_rss = int(first)
    peak = max(0.0, (usage.ru_maxrss - base_rss) / 1024)
    if timed_out:
        return "timeout", f"killed after {timeout_s:g} s", peak
    if os.WIFSIGNALED(status):
        return "signal", signal.Signals(os.WTERMSIG(status)).name, peak
    try:
        outcome, detail = json.loads(rest)
    except ValueError:
        return "crash", f"child exited {os.WEXITSTATUS(status)} without a result", peak
    return outcome, detail, peak


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        for name in sorted(files):
            p = os.path.join(dirpath, name)
            if name in ("stdout", "stderr") and dirpath == str(root):
                continue
            st = os.lstat(p)
            digest.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
            with open(p, "rb") as f:
                digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def materialize(case: Case, base: Base, bases_dir: Path, workdir: Path) -> Path:
    """Copy the base into `workdir` and damage the case's target file there; the path to read."""
    root = bases_dir / base.root
    top = base.root.split("/")[0]
    shutil.copytree(bases_dir / top, workdir / top)
    target = workdir / case.target
    data = target.read_bytes()
    rng = random.Random(case.seed)
    target.write_bytes(mutate(data, case.mutator, rng, case.target))
    return workdir / root.relative_to(bases_dir)


def run_case(case: Case, base: Base, bases_dir: Path, scratch: Path, *,
             timeout_s: float = DEFAULT_TIMEOUT_S, memory_mib: int = DEFAULT_MEMORY_MIB,
             keep: Path | None = None) -> Result:
    workdir = Path(tempfile.mkdtemp(dir=scratch))
    try:
        path = materialize(case, base, bases_dir, workdir)
        before = _tree_digest(workdir / base.root.split("/")[0])
        start = time.monotonic()
        outcome, detail, peak = _run_child(case, str(path), str(workdir), timeout_s, memory_mib)
        seconds = time.monotonic() - start
        if outcome in ("ok", "error") and _tree_digest(workdir / base.root.split("/")[0]) != before:
            outcome, detail = "modified", "the input's files changed"
        if outcome in FAILURES and keep is not None:
            dest = keep / f"{case.format}-{case.base}-{case.mutator}-{case.mode}-{case.seed}"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(workdir, dest)
        return Result(case, outcome, detail, peak, seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def cases_for(fmt: str, bases: list[Base], n: int, seed: int, cli_every: int = 4) -> list[tuple[Case, Base]]:
    """`n` cases spread over the format's bases, targets and mutators; every `cli_every`-th is
    read through the CLI (0: none)."""
    rng = random.Random(f"{fmt}:{seed}")
    out = []
    for i in range(n):
        base = bases[i % len(bases)]
        mutator = MUTATORS[i % len(MUTATORS)]  # 7 mutators, < 7 bases: every pair in 7 x bases
        mode = "cli" if cli_every and i % cli_every == cli_every - 1 else "api"
        out.append((Case(fmt, base.name, rng.choice(base.targets), mutator, rng.randrange(2**63), mode), base))
    return out


def warm_up(bases: dict[str, list[Base]], bases_dir: Path,
            cli_formats: tuple[str, ...] = ("table", "json", "csv")) -> None:
    """Import and build what every child would otherwise redo (the fused kernel, the lazy imports
    of each command), by reading every base once through the API and the CLI."""
    from normscope import load_trajectory
    from normscope.cli import app

    for fmt_bases in bases.values():
        for base in fmt_bases:
            path = str(bases_dir / base.root)
            load_trajectory(path, device="cpu")
            commands = [["analyze", path, "--device", "cpu", "--format", fmt] for fmt in cli_formats]
            if base.format in ("jsonl", "tensorboard"):
                commands.append(["watch", "--once", path])
            for args in commands:
                with (contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()),
                      contextlib.suppress(SystemExit)):
                    app(args=args, prog_name="normscope")


def interleaved(per_format: dict[str, list[tuple[Case, Base]]]) -> list[tuple[Case, Base]]:
    """Round-robin over the formats, so a run cut short has covered each of them alike."""
    out = []
    lists = list(per_format.values())
    for i in range(max(map(len, lists), default=0)):
        out += [cases[i] for cases in lists if i < len(cases)]
    return out


# ---------------------------------------------------------------- the long run


def summarize(results: list[Result]) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    by_format: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        by_format[r.case.format].append(r)
    for fmt, rs in by_format.items():
        counts = Counter(r.outcome for r in rs)
        row: dict[str, float] = {"inputs": len(rs), "cli": sum(r.case.mode == "cli" for r in rs)}
        row.update({o: counts.get(o, 0) for o in OUTCOMES})
        row["peak_mib"] = max(r.peak_mib for r in rs)
        row["slowest_s"] = max(r.seconds for r in rs)
        table[fmt] = row
    return table


def load_results(path: Path) -> list[Result]:
    results = []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            case = Case(**{k: row[k] for k in ("format", "base", "target", "mutator", "seed", "mode")})
            results.append(Result(case, row["outcome"], row["detail"], row["peak_mib"], row["seconds"]))
    return results


def format_table(table: dict[str, dict[str, float]]) -> str:
    cols = ("inputs", "cli", *OUTCOMES, "peak_mib", "slowest_s")
    lines = ["| format | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for fmt, row in table.items():
        cells = [f"{row[c]:.1f}" if c in ("peak_mib", "slowest_s") else str(int(row[c])) for c in cols]
        lines.append(f"| {fmt} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-format", type=int, default=1000)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    parser.add_argument("--memory-mib", type=int, default=DEFAULT_MEMORY_MIB)
    parser.add_argument("--cli-every", type=int, default=10, help="every N-th input goes through the CLI")
    parser.add_argument("--findings", type=Path, default=None, help="keep failing inputs here")
    parser.add_argument("--results", type=Path, default=None, help="append one JSON line per input")
    parser.add_argument("--table-from", type=Path, default=None,
                        help="only print the table of a --results file (of a run cut short, say)")
    args = parser.parse_args(argv)
    if args.table_from:
        print(format_table(summarize(load_results(args.table_from))))
        return 0
    formats = tuple(f for f in args.formats.split(",") if f)

    from sample_runs.cpu_kernels import pin_cpu_kernels

    pin_cpu_kernels()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the scratch directory goes too
    scratch = Path(tempfile.mkdtemp(prefix="normscope-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    try:
        bases_dir = scratch / "bases"
        bases = build_bases(bases_dir, formats)
        warm_up(bases, bases_dir)
        if args.findings:
            args.findings.mkdir(parents=True, exist_ok=True)
        results: list[Result] = []
        started = time.monotonic()
        plan = interleaved({fmt: cases_for(fmt, bases[fmt], args.per_format, args.seed, args.cli_every)
                            for fmt in formats})
        for i, (case, base) in enumerate(plan):
            result = run_case(case, base, bases_dir, scratch, timeout_s=args.timeout,
                              memory_mib=args.memory_mib, keep=args.findings)
            results.append(result)
            if args.results:
                with open(args.results, "a") as f:
                    f.write(json.dumps({**dataclasses.asdict(case), "outcome": result.outcome,
                                        "detail": result.detail, "peak_mib": round(result.peak_mib, 1),
                                        "seconds": round(result.seconds, 3)}) + "\n")
            if result.outcome in FAILURES:
                print(f"{result.outcome}: {case} {result.detail}", flush=True)
            if (i + 1) % 2000 == 0:
                print(f"[{time.monotonic() - started:.0f} s] {i + 1}/{len(plan)} inputs", flush=True)
                print(format_table(summarize(results)), flush=True)
        print(format_table(summarize(results)))
        return 1 if any(r.outcome in FAILURES for r in results) else 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
