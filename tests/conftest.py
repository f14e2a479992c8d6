"""Shared fixtures: the committed sample runs, and a fresh tiny run trained by the same code."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from sample_runs.cpu_kernels import pin_cpu_kernels

# A view's width comes from COLUMNS when its output is not a terminal, and the commands the tests
# run inherit this environment: a test that needs a width sets it. Whatever the caller's shell
# exports is dropped, and so is what GNU readline sets once a process imports it (COLUMNS=80
# LINES=24, which pytest-xdist's workers inherit from the process that starts them), so the suite
# reads the same from any shell and in parallel.
for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)

# Before any tensor work: the fresh tiny run must reproduce the committed one bit for bit, and
# torch's kernels depend on the CPU's instruction set unless pinned.
pin_cpu_kernels()

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_RUNS = REPO_ROOT / "sample_runs"
TINY_RUN_EPOCHS = 3  # epoch_000.pt … epoch_003.pt, 23 steps per epoch, LR ×0.1 after epoch 2


@pytest.fixture(scope="session")
def sample_runs_dir() -> Path:
    return SAMPLE_RUNS


@pytest.fixture(scope="session")
def sample_manifest() -> dict:
    """``sample_runs/manifest.json``: hyper-parameters, checkpoint names and per-epoch measurements."""
    return json.loads((SAMPLE_RUNS / "manifest.json").read_text())


@pytest.fixture(scope="session")
def sgd_run_dir() -> Path:
    """BN CNN + SGD (momentum 0.9, wd 1e-3, lr 0.2 → 0.02 at epoch 45): ``epoch_000.pt`` … ``epoch_060.pt``."""
    return SAMPLE_RUNS / "digits_bn_cnn_sgd"


@pytest.fixture(scope="session")
def adamw_run_dir() -> Path:
    """Pre-LN transformer + AdamW via the real HF Trainer: ``checkpoint-23/`` … ``checkpoint-460/``."""
    return SAMPLE_RUNS / "digits_ln_transformer_adamw"


@pytest.fixture(scope="session")
def lightning_run_dir() -> Path:
    """BN CNN via a real Lightning Trainer, 5 epochs: ``epoch=0-step=23.ckpt`` … ``epoch=4-step=115.ckpt``
    and ``last.ckpt``; state_dict keys carry the ``model.`` prefix."""
    return SAMPLE_RUNS / "digits_bn_cnn_lightning"


@pytest.fixture(scope="session")
def _digits_split():
    pytest.importorskip("sklearn", reason="the sample runs need scikit-learn (normscope[samples])")
    from sample_runs.digits import load_digits_split

    return load_digits_split()


@pytest.fixture
def make_tiny_run(_digits_split) -> Callable[..., Path]:
    """Factory: ``make_tiny_run(directory, epochs=3)`` trains a real BN CNN + SGD run there (≈ 1 s)
    with ``sample_runs.sgd_run.train_sgd_run`` — the code ``train.py`` uses — and returns the directory."""
    from sample_runs.sgd_run import SGDRunConfig, train_sgd_run

    def make(directory: Path, epochs: int = TINY_RUN_EPOCHS) -> Path:
        config = SGDRunConfig(epochs=epochs, decay_epochs=(max(1, epochs - 1),))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the committed runs were trained on one thread; match them bit for bit
        try:
            train_sgd_run(directory, config, _digits_split)
        finally:
            torch.set_num_threads(threads)
        return directory

    return make


@pytest.fixture
def tiny_trained_run(tmp_path, make_tiny_run) -> Path:
    """A fresh 3-epoch BN CNN run in ``tmp_path / "tiny_run"`` (4 checkpoints, steps 0/23/46/69)."""
    return make_tiny_run(tmp_path / "tiny_run")


@pytest.fixture(params=["c-loops", "python-loops"])
def each_reader_loops(request, monkeypatch):
    """Run a test once with the torch.save reader's C loops and once with its Python ones."""
    from normscope.sources import _speedups, _zipdir

    # the directory facts of a file are cached: each test reads its files with its own loops
    _zipdir._zip_facts.cache_clear()
    request.addfinalizer(_zipdir._zip_facts.cache_clear)
    if request.param == "python-loops":
        monkeypatch.setattr(_speedups, "torchzip", None)
    elif _speedups.torchzip is None:
        pytest.skip("this install has no C reader loops (built without a C compiler)")
    return request.param


@pytest.fixture(params=["fused", "torch"])
def each_cpu_kernel(request, monkeypatch):
    """Run a test once with the fused C kernel and once with the torch row-block kernels."""
    from normscope.engine.fused import fused_kernel

    if request.param == "torch":
        monkeypatch.setenv("NORMSCOPE_FUSED", "0")
    else:
        monkeypatch.delenv("NORMSCOPE_FUSED", raising=False)
        if fused_kernel() is None:
            pytest.skip("this install has no fused kernel (built without a C compiler)")
    return request.param


@pytest.fixture
def single_threaded_torch():
    """torch with one intra-op thread for the test. The float64 references are big torch ops; on a
    busy machine torch's OpenMP regions stall for a scheduler slice each, so the references (not
    the engine under test) would dominate the test's time."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
