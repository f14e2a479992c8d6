"""`--one-file-per-epoch`: bare checkpoints that record no step or epoch, read as one epoch per file.

The run is built from real sample checkpoints (`sample_runs/digits_bn_cnn_sgd`, epochs 0–11) with
everything but the weights stripped: `model_1.pt` … `model_12.pt` hold a bare state dict each, so
neither the recorded epoch nor `--steps-per-epoch` can place them. Their names sort differently as
text (`model_10.pt` before `model_2.pt`) and as numbers, so the numbering shows which order it used.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from normscope.cli import app

SGD = Path(__file__).resolve().parent.parent / "sample_runs" / "digits_bn_cnn_sgd"
LIVE = SGD.parent / "digits_bn_cnn_live" / "track.jsonl"
FILES = 12
ORDER_NOTE = (f"--one-file-per-epoch: the {FILES} checkpoint(s) are epochs 1–{FILES}, ordered by file name, "
              f"numbers in the names compared as numbers (model_1.pt … model_{FILES}.pt)")
runner = CliRunner()


@pytest.fixture(scope="module")
def bare_run(tmp_path_factory) -> Path:
    if not SGD.exists():
        pytest.skip("sample run missing")
    run = tmp_path_factory.mktemp("bare") / "run"
    run.mkdir()
    for k in range(1, FILES + 1):  # model_k.pt holds the weights after epoch k - 1 of the sample run
        checkpoint = torch.load(SGD / f"epoch_{k - 1:03d}.pt", weights_only=True)
        torch.save(checkpoint["model"], run / f"model_{k}.pt")
    return run


def invoke(*args):
    return runner.invoke(app, [*map(str, args)])


def test_bare_checkpoints_record_no_epoch_and_steps_per_epoch_cannot_place_them(bare_run):
    plain = invoke("analyze", bare_run, "-f", "json")
    assert plain.exit_code == 0, plain.output
    document = json.loads(plain.stdout)
    assert all(s["epoch"] is None and s["step"] is None for s in document["snapshots"])
    assert document["skipped"]["bounces"] == ("the checkpoints record no epoch; pass --steps-per-epoch N (or "
                                              "--one-file-per-epoch when each checkpoint file is one epoch)")
    refused = invoke("recommend", bare_run, "--steps-per-epoch", "1", "--lr", "0.2")
    assert refused.exit_code == 2
    assert "needs the step of every snapshot" in refused.stderr and "--one-file-per-epoch" in refused.stderr


def test_analyze_numbers_the_files_1_to_n_in_their_numeric_order_and_says_so(bare_run):
    result = invoke("analyze", bare_run, "--one-file-per-epoch", "-f", "json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    epochs = {Path(s["path"]).name: s["epoch"] for s in document["snapshots"]}
    assert epochs == {f"model_{k}.pt": float(k) for k in range(1, FILES + 1)}
    assert [Path(s["path"]).name for s in document["snapshots"]][:3] == ["model_1.pt", "model_2.pt", "model_3.pt"]
    assert document["run"]["warnings"] == [ORDER_NOTE]
    assert f"normscope: warning: {ORDER_NOTE}" in result.stderr
    assert "bounces" not in document["skipped"]
    assert document["bounces"]["epochs"] == list(range(1, FILES + 1))
    # the epochs are those of the sample run, one later (the first file is the weights after epoch 0)
    sample = json.loads(invoke("analyze", SGD, "--every", "1", "-f", "json").stdout)["bounces"]
    assert document["bounces"]["norm_sq"] == pytest.approx(sample["norm_sq"][:FILES], rel=1e-12)


def test_every_thins_the_files_after_numbering_them(bare_run):
    result = invoke("analyze", bare_run, "--one-file-per-epoch", "--every", "5", "-f", "json")
    assert result.exit_code == 0, result.output
    epochs = {Path(s["path"]).name: s["epoch"] for s in json.loads(result.stdout)["snapshots"]}
    assert epochs == {"model_1.pt": 1.0, "model_6.pt": 6.0, "model_11.pt": 11.0, "model_12.pt": 12.0}


def test_recommend_check_report_and_watch_take_the_same_flag(bare_run, tmp_path):
    recommend = invoke("recommend", bare_run, "--one-file-per-epoch", "--lr", "0.2", "-f", "json")
    assert recommend.exit_code == 0, recommend.output
    document = json.loads(recommend.stdout)
    assert document["norm"]["epochs"] == list(range(1, FILES + 1))
    assert document["total_epochs"] == FILES

    check = invoke("check", bare_run, "--one-file-per-epoch", "--bounce-by-epoch", "none", "-f", "json")
    assert check.exit_code == 0, check.output
    bounce = next(f for f in json.loads(check.stdout)["findings"] if f["rule"] == "bounce")
    assert bounce["message"] == f"no bounce in epochs 1–{FILES}"
    assert ORDER_NOTE in check.stderr
    no_flag = invoke("check", bare_run, "--bounce-by-epoch", "none")
    assert no_flag.exit_code == 2 and "record no epoch" in no_flag.stderr

    out = tmp_path / "report.md"
    report = invoke("report", bare_run, "--one-file-per-epoch", "-o", out)
    assert report.exit_code == 0, report.output
    text = out.read_text(encoding="utf-8").replace("\\", "")
    assert f"{FILES} snapshots, from epoch 1 to epoch {FILES}" in text
    assert f"note: {ORDER_NOTE}" in text
    assert "| block1.conv.weight | weight | 16x1x3x3 | 2.305 | 2.305 | epoch 1 |" in text

    watch = invoke("watch", bare_run, "--one-file-per-epoch", "--once")
    assert watch.exit_code == 0, watch.output
    assert f"epoch {FILES} · {FILES} record(s)" in watch.stdout


def test_the_flag_is_refused_with_steps_per_epoch_and_on_a_log_of_steps(bare_run):
    both = invoke("analyze", bare_run, "--one-file-per-epoch", "--steps-per-epoch", "23")
    assert both.exit_code == 2 and both.stderr.count("\n") == 1
    assert "give --one-file-per-epoch or --steps-per-epoch, not both" in both.stderr
    if not LIVE.exists():
        pytest.skip("sample live log missing")
    for command in ("analyze", "watch"):
        log = invoke(command, LIVE, "--one-file-per-epoch", *(["--once"] if command == "watch" else []))
        assert log.exit_code == 2 and "Traceback" not in log.stderr, (command, log.output)
        assert "--one-file-per-epoch numbers checkpoint files" in log.stderr and "--steps-per-epoch" in log.stderr


def test_the_python_api_numbers_the_files_from_run_options(bare_run):
    from normscope.analysis.runner import RunOptions, analyze_run
    from normscope.api import load_trajectory, load_with_options

    options = RunOptions(one_file_per_epoch=True)
    trajectory = load_with_options(bare_run, options)
    assert [m.epoch for m in trajectory.snapshots] == [float(k) for k in range(1, FILES + 1)]
    assert analyze_run(trajectory, options).bounces.series.epochs == tuple(range(1, FILES + 1))
    assert load_trajectory(bare_run).snapshots[0].epoch is None
