"""`normscope watch`: the live frame, following sources, and the command itself."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from live_helpers import batches, digits_tensors, one_thread, small_bn_cnn
from torch import nn
from typer.testing import CliRunner

import normscope
from normscope.live.frame import equilibrium_angle
from normscope.live.view import live_frame
from normscope.cli import app
from normscope.live.source import LiveSource

LR, WD, MU = 0.1, 1e-3, 0.9


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


def _train(path, steps=8, every=1):
    torch.manual_seed(0)
    model = small_bn_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MU, weight_decay=WD)
    x, y = digits_tensors(64 * steps)
    with normscope.track(model, opt, path, every=every) as tracker:
        for i, (xb, yb) in enumerate(batches(x, y)):
            tracker.set_epoch(i // 4)
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    return model


def test_frame_from_a_real_log(tmp_path):
    path = tmp_path / "track.jsonl"
    _train(path)
    trajectory = LiveSource(path).poll()
    frame = live_frame(trajectory, recent=3)
    assert (frame.step, frame.epoch, frame.records, frame.optimizer) == (8, 1.0, 8, "SGD")
    assert (frame.lr, frame.weight_decay, frame.momentum) == (LR, WD, MU)
    layers = {layer.param: layer for layer in frame.layers}
    # convs feeding BatchNorm are scale-invariant: <w, g> = 0 to rounding; the classifier is not
    assert layers["0.weight"].scale_invariant and layers["3.weight"].scale_invariant
    assert not layers["8.weight"].scale_invariant and not layers["8.bias"].scale_invariant
    predicted = math.sqrt(2 * LR * WD / (1 + MU))
    assert layers["0.weight"].equilibrium_angle_rad == pytest.approx(predicted)
    assert math.isnan(layers["8.weight"].equilibrium_angle_rad)
    # the per-step angle is the mean of the last 3 steps' angles, as the table has them
    table = trajectory.table
    conv = table[table["param"] == "0.weight"]
    assert layers["0.weight"].angle_is_per_step
    assert layers["0.weight"].angle_rad == pytest.approx(conv["angle_rad"].iloc[-3:].mean(), rel=1e-9)
    assert conv["update_angle_rad"].iloc[1:].to_numpy() == pytest.approx(
        conv["angle_rad"].iloc[1:].to_numpy(), rel=1e-6)
    total = math.sqrt(sum(float(p.norm) ** 2 for p in frame.layers if p.param in ("0.weight",
                                                                              "3.weight", "8.weight")))
    assert frame.total_weight_norm == pytest.approx(total, rel=1e-9)


def test_sparse_log_still_has_per_step_angles(tmp_path):
    path = tmp_path / "track.jsonl"
    _train(path, every=4)
    frame = live_frame(LiveSource(path).poll())
    assert frame.records == 2 and all(math.isfinite(layer.angle_rad) for layer in frame.layers)


def test_equilibrium_formulas():
    assert equilibrium_angle("SGD", 0.1, 5e-4, 0.9, math.nan) == pytest.approx(math.sqrt(1e-4 / 1.9))
    assert equilibrium_angle("AdamW", 1e-3, 0.1, math.nan, 0.9) == pytest.approx(
        math.sqrt(2e-4 * 0.1 / 1.9))
    assert math.isnan(equilibrium_angle("Adam", 1e-3, 0.1, math.nan, 0.9))  # coupled decay
    assert math.isnan(equilibrium_angle("SGD", 0.1, 0.0, 0.9, math.nan))  # no decay, no equilibrium


def test_an_empty_log_file_is_waited_on_like_a_missing_one(tmp_path):
    """The file exists before its header is written (a job that touched it, a shell's `>`)."""
    path = tmp_path / "track.jsonl"
    path.write_bytes(b"")
    source = LiveSource(path)
    assert source.poll() is not None and source.poll() is None
    _train(path, steps=3)
    assert source.poll().table["step"].max() == 3


def test_source_polls_only_when_the_log_grows(tmp_path):
    path = tmp_path / "later.jsonl"
    source = LiveSource(path)  # the run has not started: wait for its log
    assert source.poll() is not None and source.poll() is None
    _train(path, steps=4)
    first = source.poll()
    assert first is not None and first.table["step"].max() == 4
    assert source.poll() is None
    _train(path, steps=2)  # a new run reusing the path: the follower restarts
    again = source.poll()
    assert again.table["step"].max() == 2


def test_source_rereads_a_checkpoint_directory_when_it_changes(tmp_path):
    model = small_bn_cnn()
    torch.save(model.state_dict(), tmp_path / "step_1.pt")
    torch.save(model.state_dict(), tmp_path / "step_2.pt")
    source = LiveSource(tmp_path)
    assert source.poll().table["snapshot"].nunique() == 2
    assert source.poll() is None
    with torch.no_grad():
        model[0].weight.mul_(2)
    torch.save(model.state_dict(), tmp_path / "step_3.pt")
    frame = live_frame(source.poll())
    assert frame.records == 3
    conv = next(layer for layer in frame.layers if layer.param == "0.weight")
    assert conv.norm_change == pytest.approx(1.0) and not conv.angle_is_per_step
    (tmp_path / "step_4.pt").write_bytes(b"PK\x03\x04 half written")  # a save in progress
    assert source.poll() is None and source.last_error


def test_cli_once_prints_one_frame_on_stdout(tmp_path):
    path = tmp_path / "track.jsonl"
    _train(path, steps=4)
    result = CliRunner().invoke(app, ["watch", str(path), "--once"])
    assert result.exit_code == 0, result.output
    assert "0.weight" in result.output and "weight s.i." in result.output
    assert "step 4" in result.output and "SGD lr=0.1" in result.output


def test_cli_once_on_tensorboard_with_a_tag_pattern(tmp_path):
    writer = pytest.importorskip("torch.utils.tensorboard").SummaryWriter(str(tmp_path))
    for step in range(3):
        writer.add_scalar("norms/fc.weight", 2.0 + step, step)
    writer.close()
    result = CliRunner().invoke(app, ["watch", str(tmp_path), "--once",
                                      "--tag-pattern", r"norms/(?P<param>.+)"])
    assert result.exit_code == 0, result.output
    assert "fc.weight" in result.output and "+100.0%" in result.output


@pytest.mark.parametrize("args, message", [
    (["/definitely/not/here"], "no such file or directory"),
    (["{tmp}", "--tag-pattern", "(unclosed"], "not a valid regex"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    (tmp_path / "events.out.tfevents.1").write_bytes(b"")
    result = CliRunner().invoke(app, ["watch", *args, "--once"])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_live_mode_refreshes_and_exits_cleanly_on_ctrl_c(tmp_path):
    path = tmp_path / "track.jsonl"
    _train(path, steps=2)
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "COLUMNS": "120"}
    proc = subprocess.Popen([sys.executable, "-m", "normscope", "watch", str(path),
                             "--interval", "0.1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()

    def shows(text: str) -> bool:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if text in "".join(err):
                return True
            time.sleep(0.05)
        return False

    try:
        assert shows("step 2"), "".join(err)  # the first frame is up
        _train(path, steps=4)  # a new run rewrites the log while the view is up
        assert shows("step 4"), "".join(err)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=5)
    assert proc.returncode == 0, "".join(err)
    assert "Traceback" not in "".join(err) and proc.stdout.read() == ""
