"""TensorBoard event files with per-layer norm scalars, written by torch's SummaryWriter."""

from __future__ import annotations

import math

import pytest

from normscope.errors import BadInputError, ConfigError
from normscope.sources.tensorboard_log import (
    classify_tag,
    compile_tag_pattern,
    read_tensorboard,
)

SummaryWriter = pytest.importorskip("torch.utils.tensorboard").SummaryWriter


def _write_events(logdir, steps=6, nan_at=None):
    writer = SummaryWriter(str(logdir))
    for step in range(steps):
        writer.add_scalar("train/loss", 1.0 / (step + 1), step)
        writer.add_scalar("epoch", step // 3, step)
        writer.add_scalar("lr-SGD", 0.1 if step < 3 else 0.01, step)
        writer.add_scalar("grad_2.0_norm/conv.weight", 0.5 + step, step)
        writer.add_scalar("grad_2.0_norm_total", 9.0, step)
        weight = float("nan") if step == nan_at else 3.0 - 0.1 * step
        writer.add_scalar("weight_norm/conv.weight", weight, step)
        writer.add_scalar("grad_norm/conv.weight", 0.25, step)
        writer.add_scalar("layer_grad_l2_norm/fc", 0.75, step)
    writer.close()


def test_lightning_and_composer_grad_norms_without_a_pattern(tmp_path):
    _write_events(tmp_path / "version_0")
    run = read_tensorboard(tmp_path)  # the run directory is found under the root
    assert run.layout == "tensorboard" and run.snapshots == []
    assert [s.meta.step for s in run.stats] == list(range(6))
    last = run.stats[-1]
    assert set(last.params) == {"conv.weight", "fc"}  # `_total` is not a parameter
    assert last.params["conv.weight"].grad_norm_sq == pytest.approx(5.5 ** 2)
    assert math.isnan(last.params["conv.weight"].norm_sq)  # weight norms were not matched
    assert last.meta.epoch == 1.0
    assert last.meta.param_groups[0].lr == pytest.approx(0.01)
    assert run.stats[0].meta.param_groups[0].lr == pytest.approx(0.1)


def test_user_pattern_with_stat_group_reads_weight_and_grad_norms(tmp_path):
    _write_events(tmp_path, nan_at=2)
    run = read_tensorboard(tmp_path, tag_pattern=r"^(?P<stat>weight|grad)_norm/(?P<param>.+)$")
    conv = [s.params["conv.weight"] for s in run.stats]
    assert conv[0].norm_sq == pytest.approx(9.0) and conv[5].norm_sq == pytest.approx(2.5 ** 2)
    assert conv[0].grad_norm_sq == pytest.approx(0.25 ** 2)  # user pattern wins over Lightning's
    assert conv[2].nonfinite == 1 and math.isnan(conv[2].norm_sq)
    assert any("non-finite" in w for w in run.warnings)


def test_single_event_file_path(tmp_path):
    _write_events(tmp_path)
    event_file = next(tmp_path.glob("events.out.tfevents*"))
    assert len(read_tensorboard(event_file).stats) == 6


def test_tag_classification():
    user = compile_tag_pattern(r"norms/(?P<param>[^/]+)/(?P<stat>\w+)")
    assert classify_tag("norms/fc.weight/grad", user) == ("fc.weight", "grad")
    assert classify_tag("norms/fc.weight/w", user) == ("fc.weight", "weight")
    assert classify_tag("grad_2_norm/fc.bias", None) == ("fc.bias", "grad")
    assert classify_tag("grad_inf_norm/fc.bias", None) is None  # not an L2 norm
    assert classify_tag("train/loss", None) is None


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="named group"):
        compile_tag_pattern(r"weight_norm/(.+)")
    with pytest.raises(ConfigError, match="not a valid regex"):
        compile_tag_pattern(r"weight_norm/(?P<param>")
    with pytest.raises(BadInputError, match="no TensorBoard event files"):
        read_tensorboard(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BadInputError, match="not a TensorBoard event file"):
        read_tensorboard(tmp_path / "notes.txt")
    writer = SummaryWriter(str(tmp_path / "a"))
    writer.add_scalar("train/loss", 1.0, 0)
    writer.close()
    with pytest.raises(BadInputError, match="no per-layer norm scalars.*train/loss"):
        read_tensorboard(tmp_path / "a")
    _write_events(tmp_path / "b")
    with pytest.raises(BadInputError, match="2 TensorBoard runs"):
        read_tensorboard(tmp_path)


def test_event_file_cut_mid_record_keeps_the_whole_records(tmp_path):
    _write_events(tmp_path)
    event_file = next(tmp_path.glob("events.out.tfevents*"))
    data = event_file.read_bytes()
    event_file.write_bytes(data[:-20])  # a run still writing, or a crash
    steps = [s.meta.step for s in read_tensorboard(tmp_path).stats]
    assert steps == list(range(6))  # the cut record was the last scalar of step 5
    event_file.write_bytes(b"\x00garbage" * 64)  # nothing readable at all: said so, not "no norm tags"
    with pytest.raises(BadInputError, match="hold no readable events"):
        read_tensorboard(tmp_path)


def test_registry_detects_event_directories(tmp_path):
    from normscope.sources import detect_layout, open_run

    _write_events(tmp_path / "lightning_logs" / "version_0")
    assert detect_layout(str(tmp_path)).name == "tensorboard"
    assert len(open_run(tmp_path).stats) == 6
