"""A quick seeded fuzz: damaged copies of real checkpoints and logs of every layout.

Each input is read in a forked child (benchmarks/fuzz.py) with a 20 s limit and an address-space
cap, so a crash or a hang fails this test instead of killing pytest. Every outcome must be a
result or one NormscopeError line (API), exit 0 or one-line exit 2 (CLI): never a signal, a
timeout, exit 101, a traceback, another exception, or a changed input file. The long run is
`python benchmarks/fuzz.py --per-format 10000`.
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys
from collections import Counter
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "benchmarks" / "fuzz.py"
PER_FORMAT = 14  # every mutator twice in each format
CLI_EVERY = 4


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("normscope_fuzz", FUZZ)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bases(fuzz, tmp_path_factory):
    pytest.importorskip("torch.utils.tensorboard")
    bases_dir = tmp_path_factory.mktemp("fuzz-bases")
    built = fuzz.build_bases(bases_dir)
    fuzz.warm_up(built, bases_dir, cli_formats=("table",))
    return bases_dir, built


def test_the_mutators_change_every_layout_and_keep_its_size_bounded(fuzz, bases):
    bases_dir, built = bases
    rng = random.Random(0)
    for fmt_bases in built.values():
        for base in fmt_bases:
            for target in base.targets:
                data = (bases_dir / target).read_bytes()
                for mutator in fuzz.MUTATORS:
                    changed = [fuzz.mutate(data, mutator, rng, target) for _ in range(5)]
                    assert any(c != data for c in changed), (target, mutator)
                    # a field may hold a 100,000-deep JSON array, nothing more
                    assert all(len(c) < len(data) + 2**18 for c in changed), (target, mutator)


@pytest.mark.parametrize("fmt", ["torch", "safetensors", "dcp", "jsonl", "tensorboard"])
def test_damaged_inputs_are_read_or_refused_in_one_line(fuzz, bases, fmt, tmp_path):
    bases_dir, built = bases
    results = [
        fuzz.run_case(case, base, bases_dir, tmp_path, timeout_s=fuzz.DEFAULT_TIMEOUT_S,
                      memory_mib=fuzz.DEFAULT_MEMORY_MIB)
        for case, base in fuzz.cases_for(fmt, built[fmt], PER_FORMAT, seed=20261203, cli_every=CLI_EVERY)
    ]
    failures = [f"{r.outcome}: {r.case} {r.detail}" for r in results if r.outcome in fuzz.FAILURES]
    assert not failures, "\n".join(failures)
    outcomes = Counter(r.outcome for r in results)
    assert outcomes["ok"], outcomes
    if fmt != "tensorboard":  # TensorBoard's reader skips damaged records without a word
        assert outcomes["error"], outcomes  # damage that must be refused was met
    assert {r.case.mode for r in results} == {"api", "cli"}
    assert max(r.peak_mib for r in results) < fuzz.DEFAULT_MEMORY_MIB
    assert not os.listdir(tmp_path)  # each input's copy was removed


def test_a_crash_and_a_hang_in_the_child_are_outcomes_not_a_dead_pytest(fuzz, bases, tmp_path, monkeypatch):
    # the harness itself: a child that dies of a signal, or never returns, is reported as such
    bases_dir, built = bases
    case, base = fuzz.cases_for("jsonl", built["jsonl"], 1, seed=1, cli_every=0)[0]
    monkeypatch.setattr(fuzz, "_child_api", lambda path: os.kill(os.getpid(), 11))
    assert fuzz.run_case(case, base, bases_dir, tmp_path).outcome == "signal"
    monkeypatch.setattr(fuzz, "_child_api", lambda path: __import__("time").sleep(60))
    result = fuzz.run_case(case, base, bases_dir, tmp_path, timeout_s=0.5)
    assert result.outcome == "timeout"
    monkeypatch.setattr(fuzz, "_child_api", lambda path: ("ok", "", bytearray(2**31)))
    assert fuzz.run_case(case, base, bases_dir, tmp_path).outcome == "crash"  # MemoryError at the cap
