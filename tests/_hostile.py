"""Crafted hostile checkpoints, and running normscope on one where a crash cannot take pytest down.

`save_forged` writes a real `torch.save` archive (torch's own writer, records and layout) in which
chosen tensors are pickled with rebuild arguments of the test's choosing: a storage offset, size
or stride that no tensor has, as a crafted file would hold them.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class Forged:
    """`tensor`'s storage, pickled with these rebuild arguments in place of its own."""

    tensor: torch.Tensor
    offset: int | None = None
    size: tuple[int, ...] | None = None
    stride: tuple[int, ...] | None = None


class _ForgingPickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is not Forged:
            return NotImplemented
        rebuild, args = obj.tensor.__reduce_ex__(2)
        args = list(args)
        for at, value in ((1, obj.offset), (2, obj.size), (3, obj.stride)):
            if value is not None:
                args[at] = value
        return rebuild, tuple(args)


def _forging_pickle_module() -> types.ModuleType:
    module = types.ModuleType("forging_pickle")
    module.__dict__.update({k: v for k, v in vars(pickle).items() if not k.startswith("__")})
    module.Pickler = _ForgingPickler  # type: ignore[attr-defined]
    return module


def save_forged(obj: Any, path: Path) -> Path:
    torch.save(obj, path, pickle_module=_forging_pickle_module())
    return path


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str

    @property
    def signalled(self) -> bool:
        return self.returncode < 0


def run_cli(*args: str, timeout: float = 120) -> Outcome:
    """`normscope ARGS` in a child process: a fault ends the child, not the test run."""
    done = subprocess.run([sys.executable, "-m", "normscope", *args], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    return Outcome(done.returncode, done.stdout, done.stderr)


_API = """
import sys
from normscope.errors import NormscopeError
from normscope.engine import compute_stats
from normscope.sources import open_run
for path in sys.argv[1:]:
    try:
        run = open_run(path)
        compute_stats(run.snapshots, device="cpu")
        result = ("ok", "", "")
    except NormscopeError as exc:
        result = ("NormscopeError", type(exc).__name__, str(exc))
    except BaseException as exc:
        result = ("other", type(exc).__name__, str(exc))
    print(repr(result), flush=True)
"""


@dataclass(frozen=True)
class ApiResult:
    kind: str  # "ok", "NormscopeError", "other"; "crashed" when the child died before answering
    error: str
    message: str


def run_api(*paths: Path, timeout: float = 300) -> list[ApiResult]:
    """`open_run(path)` and `compute_stats` for each path, in one child process (a fault ends
    it: that path and the rest come back "crashed", with the signal in the message)."""
    import ast

    done = subprocess.run([sys.executable, "-c", _API, *map(str, paths)], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    results = [ApiResult(*ast.literal_eval(line)) for line in done.stdout.splitlines()]
    why = f"exit {done.returncode}: {done.stderr[-500:]}"
    return results + [ApiResult("crashed", "", why)] * (len(paths) - len(results))


def assert_refused(outcome: Outcome) -> str:
    """The CLI's refusal: exit 2, no signal, one line on stderr; that line."""
    assert not outcome.signalled, f"killed by signal {-outcome.returncode}: {outcome.stderr[-2000:]}"
    assert outcome.returncode == 2, (outcome.returncode, outcome.stdout[-2000:],
                                     outcome.stderr[-2000:])  # fmt: skip
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1, outcome.stderr
    return lines[0]


def assert_api_refused(result: ApiResult) -> str:
    """The API's refusal: a NormscopeError of one line; its message."""
    assert result.kind == "NormscopeError", result
    assert "\n" not in result.message and result.message
    return result.message


# The child's API call: compute_stats on the run at sys.argv[index]; a NormscopeError is printed
# as "Kind<TAB>message" with exit 2, success as "ok".
_COMPUTE_IN_CHILD = """
def compute(index):
    from normscope.errors import NormscopeError
    from normscope.engine import compute_stats
    from normscope.sources import open_run
    run = open_run(sys.argv[index])
    try:
        compute_stats(run.snapshots, device="cpu")
    except NormscopeError as exc:
        print(type(exc).__name__, str(exc), sep="\\t")
        sys.exit(2)
    print("ok")
"""

_TRUNCATED_BETWEEN_OPEN_AND_COMPUTE = """
import os, sys
import normscope.engine.driver as driver
victim, how = sys.argv[1], sys.argv[2]
engine = driver.run_engine

def truncate_first(*args, **kwargs):
    os.truncate(victim, os.path.getsize(victim) // 2)  # a rewrite in place, half done
    return engine(*args, **kwargs)

driver.run_engine = truncate_first
if how == "api":
    compute(3)
else:
    from normscope.cli import main
    sys.argv = ["normscope", *sys.argv[3:]]
    main()
"""


def truncated_while_mapped(victim: Path, how: str, *args: str, env: dict[str, str] | None = None,
                           timeout: float = 300) -> Outcome:  # fmt: skip
    """normscope (`how`: "api" with the run's path as `args`, or "cli" with its arguments)
    opens the run, then `victim` is cut to half its size before the engine reads any tensor."""
    import os

    script = _COMPUTE_IN_CHILD + _TRUNCATED_BETWEEN_OPEN_AND_COMPUTE
    done = subprocess.run([sys.executable, "-c", script, str(victim), how, *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})  # fmt: skip
    return Outcome(done.returncode, done.stdout, done.stderr)


def huge_zip64_sizes(data: bytes, member: bytes, value: int = (1 << 64) - 1) -> bytes:
    """A torch.save zip with `member`'s sizes moved from its central-directory entry to a zip64
    extra field that holds `value` (the end records adjusted to match)."""
    import struct

    data = bytearray(data)
    at = data.rindex(b"PK\x01\x02", 0, data.rindex(member))
    name_len, extra_len = struct.unpack_from("<2H", data, at + 28)
    assert extra_len == 0  # torch writes none for small members
    struct.pack_into("<2L", data, at + 20, 0xFFFFFFFF, 0xFFFFFFFF)
    struct.pack_into("<H", data, at + 30, 20)
    extra_at = at + 46 + name_len
    data[extra_at:extra_at] = struct.pack("<2H2Q", 1, 16, value, value)
    end64 = data.rindex(b"PK\x06\x06")
    struct.pack_into("<Q", data, end64 + 40, struct.unpack_from("<Q", data, end64 + 40)[0] + 20)
    locator = data.rindex(b"PK\x06\x07")
    struct.pack_into("<Q", data, locator + 8, struct.unpack_from("<Q", data, locator + 8)[0] + 20)
    end = data.rindex(b"PK\x05\x06")
    cd_size = struct.unpack_from("<L", data, end + 12)[0]
    if cd_size != 0xFFFFFFFF:
        struct.pack_into("<L", data, end + 12, cd_size + 20)
    return bytes(data)


_TRUNCATED_WHILE_THE_KERNEL_READS = """
import os, sys
import normscope.engine.driver as driver
victim = sys.argv[1]
load_work = driver.load_work
cut = []

def load_then_truncate(item, **kwargs):
    work = load_work(item, **kwargs)
    files = {stamp.path for stamp in item.source.files}
    if not cut and victim in files:  # read, checked, not yet reduced
        os.truncate(victim, os.path.getsize(victim) // 2)
        cut.append(item.snapshot)
    return work

driver.load_work = load_then_truncate
from normscope.engine.fused import fused_kernel
assert fused_kernel() is not None, "no fused kernel"
compute(2)
"""


def truncated_while_the_kernel_reads(victim: Path, run: Path, timeout: float = 300) -> Outcome:
    """`compute_stats` on `run`, with `victim` cut to half its size after its first bucket was
    read (and checked) and before the fused kernel reduces it."""
    done = subprocess.run([sys.executable, "-c", _COMPUTE_IN_CHILD + _TRUNCATED_WHILE_THE_KERNEL_READS, str(victim),
                           str(run)], capture_output=True, text=True, timeout=timeout)  # fmt: skip
    return Outcome(done.returncode, done.stdout, done.stderr)


_TRUNCATED_WHILE_TORCH_READS = """
import os, sys
import normscope.engine.driver as driver
import normscope.engine.loading as loading
victim, when, fallback, how = sys.argv[1:5]
if fallback == "torch.load":  # every tensor from torch.load(mmap=True), none from the fast readers
    import normscope.sources._torchio as torchio
    torchio._read_fast = lambda path, **kwargs: torchio._TORCH_LOAD
load_work, read = driver.load_work, loading._read
state = {"reading": False, "cut": False}

def cut(size):
    if not state["cut"]:
        os.truncate(victim, size)  # a rewrite in place, just begun
        state["cut"] = True

def read_after_cut(*args, **kwargs):  # the bucket's first tensor finds the file cut short
    if state["reading"]:
        cut(0)
    return read(*args, **kwargs)

def load_watching(item, **kwargs):
    files = {stamp.path for stamp in item.source.files}
    state["reading"] = when == "read" and victim in files
    try:
        work = load_work(item, **kwargs)
    finally:
        state["reading"] = False
    if when == "reduce" and victim in files:  # read and checked, torch's kernels not yet run
        cut(os.path.getsize(victim) // 2)
    return work

loading._read = read_after_cut
driver.load_work = load_watching
from normscope.engine.fused import fused_kernel
assert fused_kernel() is None, "the fused kernel is on"
if how == "api":
    compute(5)
else:
    from normscope.cli import main
    sys.argv = ["normscope", *sys.argv[5:]]
    main()
"""


def truncated_while_torch_reads(victim: Path, when: str, how: str, *args: str,
                                fallback: str = "fast", timeout: float = 300) -> Outcome:  # fmt: skip
    """normscope with the fused kernel off (torch's kernels, which have no SIGBUS guard), with
    `victim` cut short while a bucket of its snapshot is read (`when="read"`: to nothing, before
    the bucket's first tensor is read) or once it is read and checked, before it is reduced
    (`"reduce"`: to half its size). `how`: "api" with the run's path as `args`, or "cli" with its
    arguments; `fallback="torch.load"`: the run's torch files read by torch.load alone."""
    import os

    script = _COMPUTE_IN_CHILD + _TRUNCATED_WHILE_TORCH_READS
    done = subprocess.run([sys.executable, "-c", script, str(victim), when, fallback, how, *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "NORMSCOPE_FUSED": "0"})  # fmt: skip
    return Outcome(done.returncode, done.stdout, done.stderr)


_TRUNCATED_WHILE_OPENED = """
import importlib, os, sys
victim, module, name, marker, run = sys.argv[1:6]
owner = importlib.import_module(module)
original = getattr(owner, name)

def cut_then_call(*args, **kwargs):  # mapped, stamp-checked, its values not yet read
    if any(isinstance(arg, str) and marker in arg for arg in args):
        os.truncate(victim, 0)
    return original(*args, **kwargs)

setattr(owner, name, cut_then_call)
from normscope.errors import NormscopeError
from normscope.engine import compute_stats
from normscope.sources import open_run
try:
    compute_stats(open_run(run).snapshots, device="cpu")
except NormscopeError as exc:
    print(type(exc).__name__, str(exc), sep="\\t")
    sys.exit(2)
print("ok")
"""


def truncated_while_opened(victim: Path, module: str, name: str, marker: str, run: Path,
                           timeout: float = 300) -> Outcome:  # fmt: skip
    """`open_run` and `compute_stats` on `run`, with `victim` cut to nothing just before
    `module.name` (a step of opening the run, after the file was mapped) is called with a
    text argument holding `marker`."""
    done = subprocess.run([sys.executable, "-c", _TRUNCATED_WHILE_OPENED, str(victim), module,
                           name, marker, str(run)], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    return Outcome(done.returncode, done.stdout, done.stderr)
