"""A checkpoint cut short after normscope opened it (a job rewriting it in place) ends the run
with one line and exit 2, in the CLI and the API, where reading its mapped pages would be a SIGBUS.
"""

from __future__ import annotations

import shutil

import pytest
from _hostile import assert_refused, truncated_while_mapped, truncated_while_the_kernel_reads


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
    if layout == "torch":
        root, victim = _sgd_run(sgd_run_dir, tmp_path)
    else:
        root, victim = _hf_run(adamw_run_dir, tmp_path)
    outcome = truncated_while_the_kernel_reads(victim, root)
    assert not outcome.signalled, f"killed by signal {-outcome.returncode}: {outcome.stderr}"
    assert outcome.returncode == 2, (outcome.stdout, outcome.stderr[-2000:])
    assert outcome.stdout.startswith("BadInputError\t") and victim.name in outcome.stdout
