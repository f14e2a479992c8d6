"""A checkpoint cut short after normscope opened it (a job rewriting it in place) ends the run
with one line and exit 2, in the CLI and the API, where reading its mapped pages would be a SIGBUS.
"""

from __future__ import annotations

import shutil

import pytest
from _hostile import (
    assert_refused,
    truncated_while_mapped,
    truncated_while_opened,
    truncated_while_the_kernel_reads,
    truncated_while_torch_reads,
)


def _sgd_run(sgd_run_dir, tmp_path):  # type: ignore[no-untyped-def]
    root = tmp_path / "run"
    root.mkdir()
    for name in ("epoch_000.pt", "epoch_001.pt", "epoch_002.pt"):
        shutil.copy(sgd_run_dir / name, root / name)
    return root, root / "epoch_001.pt"


def _hf_run(adamw_run_dir, tmp_path):  # type: ignore[no-untyped-def]
    root = tmp_path / "run"
    root.mkdir()
    for name in ("checkpoint-115", "checkpoint-138"):
        shutil.copytree(adamw_run_dir / name, root / name)
    return root, root / "checkpoint-115" / "model.safetensors"


@pytest.mark.parametrize("fused", ["1", "0"], ids=["in-place-kernel", "torch-kernels"])
def test_a_torch_file_cut_short_while_mapped(sgd_run_dir, tmp_path, fused):
    root, victim = _sgd_run(sgd_run_dir, tmp_path)
    env = {"NORMSCOPE_FUSED": fused}
    line = assert_refused(truncated_while_mapped(victim, "cli", "analyze", str(root), env=env))
    assert "epoch_001.pt" in line and "while normscope was reading it" in line
    shutil.rmtree(root)
    root, victim = _sgd_run(sgd_run_dir, tmp_path)
    api = truncated_while_mapped(victim, "api", str(root), env=env)
    assert api.returncode == 2 and api.stdout.startswith("BadInputError\t"), api


def test_a_safetensors_file_cut_short_while_mapped(adamw_run_dir, tmp_path):
    root, victim = _hf_run(adamw_run_dir, tmp_path)
    line = assert_refused(truncated_while_mapped(victim, "cli", "analyze", str(root)))
    assert "model.safetensors" in line and "while normscope was reading it" in line
    shutil.rmtree(root)
    root, victim = _hf_run(adamw_run_dir, tmp_path)
    api = truncated_while_mapped(victim, "api", str(root))
    assert api.returncode == 2 and api.stdout.startswith("BadInputError\t"), api


def test_an_optimizer_file_cut_short_while_mapped(adamw_run_dir, tmp_path):
    root, _ = _hf_run(adamw_run_dir, tmp_path)
    victim = root / "checkpoint-138" / "optimizer.pt"
    line = assert_refused(truncated_while_mapped(victim, "cli", "analyze", str(root)))
    assert "optimizer.pt" in line


@pytest.mark.parametrize("layout", ["torch", "safetensors"])
def test_a_file_cut_short_while_the_kernel_reads_it(sgd_run_dir, adamw_run_dir, tmp_path, layout):
    # past every stamp check: only the kernel's SIGBUS guard stands between this and a crash
    from normscope.engine.fused import fused_kernel

    if fused_kernel() is None:
        pytest.skip("the fused kernel is not built here (python setup.py build_ext --inplace)")
    if layout == "torch":
        root, victim = _sgd_run(sgd_run_dir, tmp_path)
    else:
        root, victim = _hf_run(adamw_run_dir, tmp_path)
    outcome = truncated_while_the_kernel_reads(victim, root)
    assert not outcome.signalled, f"killed by signal {-outcome.returncode}: {outcome.stderr}"
    assert outcome.returncode == 2, (outcome.stdout, outcome.stderr[-2000:])
    assert outcome.stdout.startswith("BadInputError\t") and victim.name in outcome.stdout


# With the fused kernel off, torch's kernels reduce the buckets, and they have no SIGBUS guard:
# the engine reads every tensor they get by read calls into memory of its own. A file cut short
# during the read is a short read; one cut short after it is read no longer matters to the
# bytes in hand, and the stamp check after the bucket's sums names it.
_VICTIMS = {
    "torch zip": (_sgd_run, "epoch_001.pt"),
    "safetensors": (_hf_run, "checkpoint-115/model.safetensors"),
    "optimizer.pt": (_hf_run, "checkpoint-138/optimizer.pt"),
}


def _victim(layout, sgd_run_dir, adamw_run_dir, tmp_path):  # type: ignore[no-untyped-def]
    make, name = _VICTIMS[layout]
    root, _ = make(sgd_run_dir if make is _sgd_run else adamw_run_dir, tmp_path)
    return root, root / name


@pytest.mark.parametrize("when", ["read", "reduce"], ids=["during-the-read", "after-the-read"])
@pytest.mark.parametrize("layout", list(_VICTIMS))
def test_a_file_cut_short_while_torch_reads_it(sgd_run_dir, adamw_run_dir, tmp_path, layout, when):
    root, victim = _victim(layout, sgd_run_dir, adamw_run_dir, tmp_path)
    line = assert_refused(truncated_while_torch_reads(victim, when, "cli", "analyze", str(root)))
    assert victim.name in line, line
    if when == "read":
        assert "changed while it was read" in line, line
    shutil.rmtree(root)
    root, victim = _victim(layout, sgd_run_dir, adamw_run_dir, tmp_path)
    api = truncated_while_torch_reads(victim, when, "api", str(root))
    assert not api.signalled, f"killed by signal {-api.returncode}: {api.stderr[-2000:]}"
    assert api.returncode == 2 and api.stdout.startswith("BadInputError\t"), api
    assert victim.name in api.stdout and api.stdout.count("\n") == 1, api.stdout


@pytest.mark.parametrize("when", ["read", "reduce"], ids=["during-the-read", "after-the-read"])
def test_a_torch_load_file_cut_short_while_torch_reads_it(sgd_run_dir, tmp_path, when):
    # tensors torch.load mapped itself: no ref knows their offset; the process's mappings do
    root, victim = _sgd_run(sgd_run_dir, tmp_path)
    outcome = truncated_while_torch_reads(victim, when, "api", str(root), fallback="torch.load")
    assert not outcome.signalled, f"killed by signal {-outcome.returncode}: {outcome.stderr[-2000:]}"
    assert outcome.returncode == 2 and outcome.stdout.startswith("BadInputError\t"), outcome
    assert victim.name in outcome.stdout
    if when == "read":
        assert "changed while it was read" in outcome.stdout


def test_an_optimizer_file_cut_short_before_its_step_counts_are_read(adamw_run_dir, tmp_path):
    # AdamW's per-parameter step counts are one-element tensors of optimizer.pt, read while the
    # run is opened: by read calls, so a file cut short is a short read, not a SIGBUS
    root, _ = _hf_run(adamw_run_dir, tmp_path)
    victim = root / "checkpoint-138" / "optimizer.pt"
    outcome = truncated_while_opened(victim, "normscope.sources.hf_trainer", "read_optimizer",
                                     "checkpoint-138", root)
    assert not outcome.signalled, f"killed by signal {-outcome.returncode}: {outcome.stderr[-2000:]}"
    assert outcome.returncode == 2 and outcome.stdout.startswith("BadInputError\t"), outcome
    assert "optimizer.pt changed while it was read" in outcome.stdout
