"""User mistakes the commands catch before any work, and answers that say what they did not check."""

from __future__ import annotations

import shutil
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
    assert "PASSED" in result.stdout and "no limits" not in result.stdout  # a note: on stderr
    assert "normscope: note: no limits are set: only NaN/Inf values were checked" in result.stderr
    limited = _normscope("check", lightning_run_dir, "--max-growth", "100", cwd=tmp_path)
    assert limited.returncode == 0 and "no limits are set" not in limited.stdout + limited.stderr


@pytest.mark.parametrize("command", [("analyze",), ("check",), ("recommend",), ("watch", "--once")],
                         ids=" ".join)
def test_piped_output_has_no_trailing_padding(command, lightning_run_dir):
    result = _normscope(command[0], lightning_run_dir, *command[1:])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines and not [line for line in lines if line.endswith(" ")]


@pytest.fixture
def run_without_epochs(tmp_path, make_tiny_run):
    """A real tiny run (23 steps per epoch) whose checkpoints record the step but no epoch."""
    import torch

    run = make_tiny_run(tmp_path / "no_epochs", epochs=4)
    for checkpoint in sorted(run.glob("epoch_*.pt")):
        state = torch.load(checkpoint, weights_only=True)
        del state["epoch"]
        torch.save(state, checkpoint.with_name(checkpoint.name.replace("epoch_", "ckpt_")))
        checkpoint.unlink()
    return run


def test_every_command_that_advises_steps_per_epoch_accepts_it(run_without_epochs, tmp_path):
    advice = _normscope("analyze", run_without_epochs)
    assert advice.returncode == 0 and "--steps-per-epoch" in advice.stdout
    commands = [("analyze", "-f", "json"), ("recommend", "-f", "json"), ("watch", "--once"),
                ("check", "--bounce-by-epoch", "none"), ("report", "-o", tmp_path / "r.md")]
    for command in commands:
        result = _normscope(command[0], run_without_epochs, *command[1:], "--steps-per-epoch", "23")
        assert result.returncode in (0, 1), (command, result.stderr)
        assert "steps-per-epoch" not in result.stdout + result.stderr, (command, result.stdout)
    import json

    document = json.loads(_normscope("analyze", run_without_epochs, "-f", "json", "--steps-per-epoch", "23").stdout)
    assert document["bounces"]["epochs"] == [0, 1, 2, 3, 4]


def _sample(name):
    from pathlib import Path

    run = Path(__file__).resolve().parent.parent / "sample_runs" / name
    return run if run.exists() else pytest.skip("no sample run")


def test_recommend_states_the_premise_first_and_a_finished_run_gets_a_retrospective_verdict():
    text = _normscope("recommend", _sample("digits_bn_cnn_sgd")).stdout
    assert text.startswith("ABEL's premise: holds")
    assert "Finished run: its 60 epochs are taken as the budget" in text
    import json

    abel = json.loads(_normscope("recommend", _sample("digits_bn_cnn_sgd"), "-f", "json").stdout)["decay_epochs"]
    assert (f"It decayed the LR at epoch 45 (0.2 → 0.02); ABEL would have decayed at epoch "
            f"{', '.join(map(str, abel))}.") in text
    assert "NOT YET" not in text.upper() and "reached_minimum" not in text
    assert text.index("Finished run") < text.index("MultiStepLR")
    in_progress = _normscope("recommend", _sample("digits_bn_cnn_sgd"), "--total-epochs", "100").stdout
    assert "Finished run" not in in_progress and "At epoch 60: " in in_progress


def test_recommend_where_abel_does_not_apply_says_so_before_any_schedule():
    import json

    run = _sample("digits_ln_transformer_adamw")
    text = _normscope("recommend", run).stdout
    assert text.startswith("ABEL's premise: does not hold")
    assert "no weight tensor is scale-invariant" in text and "smooth anneal" in text
    assert "keep the schedule you have" in text
    assert "for reference only: torch.optim.lr_scheduler.MultiStepLR(" in text
    document = json.loads(_normscope("recommend", run, "-f", "json").stdout)
    assert document["premise"]["holds"] is False and document["finished"] is True


def test_help_keeps_bracketed_text():
    result = subprocess.run([sys.executable, "-m", "normscope", "analyze", "--help"], check=False,
                            capture_output=True, text=True, env={**__import__("os").environ, "COLUMNS": "300"})
    assert "Needs normscope[dask]." in result.stdout


@pytest.mark.parametrize("command", ["analyze", "recommend", "check", "report", "watch"])
def test_help_shows_plain_flags_and_the_arguments_name(command):
    import os

    result = subprocess.run([sys.executable, "-m", "normscope", command, "--help"], check=False,
                            capture_output=True, text=True, env={**os.environ, "COLUMNS": "300"})
    assert result.returncode == 0, result.stderr
    usage = next(line for line in result.stdout.splitlines() if "Usage:" in line)
    assert usage.split("Usage:", 1)[1].split() == ["normscope", command, "[OPTIONS]", "PATH"], usage
    assert "<bool>" not in result.stdout and "{path}" not in result.stdout
    if command == "check":
        assert "[tool.normscope]" in result.stdout and "[tool.normscope.check]" in result.stdout


@pytest.mark.parametrize("args", [("analyze", "--no-such-flag"), ("analyze",), ("analyze", ".", "--every", "0"),
                                  ("recommend", ".", "-f", "yaml"), ("no-such-command",)], ids=" ".join)
def test_a_usage_mistake_is_one_line_on_stderr_and_exit_2(args):
    result = _normscope(*args)
    assert result.returncode == 2, result.stderr
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("normscope: error: ") and "╭" not in result.stderr, result.stderr


@pytest.mark.parametrize(("blocked", "args", "pip"), [
    ("matplotlib", ("analyze", "{run}", "--plots", "{out}/plots"), "pip install matplotlib"),
    ("matplotlib", ("recommend", "{run}", "--plot", "{out}/plot.png"), "pip install matplotlib"),
    ("pyarrow", ("analyze", "{run}", "-f", "parquet", "-o", "{out}/t.parquet"), "normscope[parquet]"),
], ids=["analyze-plots", "recommend-plot", "parquet"])
def test_a_library_that_cannot_be_imported_is_named_not_called_a_bug(sample_runs_dir, tmp_path, blocked,
                                                                       args, pip):
    """A broken or missing library is the environment's to fix: one line naming it and what installs
    it, exit 2, never 'internal error'."""
    code = ("import sys; sys.modules[sys.argv[1]] = None; sys.argv = ['normscope', *sys.argv[2:]]\n"
            "from normscope.cli import main; main()")
    run = sample_runs_dir / "digits_bn_cnn_sgd"
    argv = [a.format(run=run, out=tmp_path) for a in args]
    result = subprocess.run([sys.executable, "-c", code, blocked, *argv], check=False, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and pip in result.stderr, result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [
    ("analyze", "-f", "csv", "-o", "{target}"),
    ("recommend", "-f", "json", "-o", "{target}"),
    ("check", "--junit", "{target}"),
    ("report", "-o", "{target}"),
], ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize("target", ["epoch_000.pt", "renamed.md", "track.jsonl", "trainer_state.json"])
def test_an_output_never_overwrites_a_file_of_a_run(command, target, sample_runs_dir, tmp_path):
    """A checkpoint (by its name or, renamed, by its first bytes), a tracker log or a run's metadata
    given as the output is refused before anything is read; every byte of it stays."""
    run = tmp_path / "run"
    shutil.copytree(sample_runs_dir / "digits_bn_cnn_sgd", run)
    sources = {"epoch_000.pt": run / "epoch_000.pt", "renamed.md": run / "epoch_000.pt",
               "track.jsonl": sample_runs_dir / "digits_bn_cnn_live" / "track.jsonl",
               "trainer_state.json": None}
    path = run / target
    if sources[target] is None:
        path.write_text('{"global_step": 10}')
    elif sources[target] != path:
        shutil.copyfile(sources[target], path)
    before = path.read_bytes()
    result = _normscope(command[0], run, *[a.format(target=path) for a in command[1:]])
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1
    if command[0] != "report" or target.endswith(".md"):  # else its name is no report format first
        assert "never writes over a run's files" in result.stderr, result.stderr
    assert path.read_bytes() == before


def test_an_earlier_output_is_written_over(sample_runs_dir, tmp_path):
    for output in ("table.csv", "table.json"):
        for _ in range(2):
            result = _normscope("analyze", sample_runs_dir / "digits_bn_cnn_sgd", "-f", output.split(".")[1],
                                "-o", tmp_path / output)
            assert result.returncode == 0, result.stderr
