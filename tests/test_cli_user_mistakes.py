"""User mistakes the commands catch before any work, and answers that say what they did not check."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _normscope(*args: object, cwd=None):
    return subprocess.run([sys.executable, "-m", "normscope", *map(str, args)], check=False,
                          capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.mark.parametrize("command", [
    ("analyze", "-f", "csv", "-o", "{missing}/out.csv"),
    ("analyze", "-o", "{dir}"),
    ("recommend", "-o", "{missing}/rec.json", "-f", "json"),
    ("recommend", "--plot", "{missing}/plot.png"),
    ("report", "-o", "{missing}/report.html"),
    ("check", "--junit", "{missing}/junit.xml"),
], ids=lambda c: " ".join(c[:2]))
def test_a_bad_output_path_is_one_line_and_exit_2_before_the_run_is_read(command, tmp_path):
    # the run does not exist either: the output path is refused first, so nothing was read
    run = tmp_path / "no_such_run"
    args = [a.format(missing=tmp_path / "missing", dir=tmp_path) for a in command]
    result = _normscope(args[0], run, *args[1:])
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("normscope: error: --"), result.stderr
    assert "internal error" not in result.stderr and str(run) not in result.stderr
    assert not (tmp_path / "missing").exists()


def test_check_without_limits_says_so(lightning_run_dir, tmp_path):
    result = _normscope("check", lightning_run_dir, cwd=tmp_path)  # no config file above tmp_path
    assert result.returncode == 0, result.stderr
    assert "PASSED" in result.stdout and "no limits are set: only NaN/Inf values were checked" in result.stdout
    limited = _normscope("check", lightning_run_dir, "--max-growth", "100", cwd=tmp_path)
    assert limited.returncode == 0 and "no limits are set" not in limited.stdout


@pytest.mark.parametrize("command", [("analyze",), ("check",), ("recommend",), ("watch", "--once")],
                         ids=" ".join)
def test_piped_output_has_no_trailing_padding(command, lightning_run_dir):
    result = _normscope(command[0], lightning_run_dir, *command[1:])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines and not [line for line in lines if line.endswith(" ")]
