"""Reading the tracker's log while it is written, cut, corrupted, resumed, truncated and rotated.

Every log here is a real one written by the tracker on a digits training run; damage is done to
its bytes the way a crash, a disk hiccup or logrotate would.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from live_helpers import batches, digits_tensors, one_thread, small_bn_cnn
from torch import nn

import normscope
from normscope.errors import BadInputError
from normscope.live.log import (
    LogFollower,
    find_log_file,
    is_jsonl_log,
    load_live_log,
    read_jsonl_log,
)


def _train_log(path, steps: int = 6, seed: int = 0, every: int = 1, model=None) -> list[str]:
    """Write a real tracker log and return its lines (newline included)."""
    with one_thread():
        torch.manual_seed(seed)
        model = model or small_bn_cnn()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        x, y = digits_tensors(64 * steps)
        with normscope.track(model, opt, path, every=every, run_id=f"seed{seed}"):
            for xb, yb in batches(x, y):
                opt.zero_grad()
                nn.functional.cross_entropy(model(xb), yb).backward()
                opt.step()
    return path.read_text().splitlines(keepends=True)


@pytest.fixture(scope="module")
def log_lines(tmp_path_factory):
    return _train_log(tmp_path_factory.mktemp("log") / "track.jsonl")


def _write(path, lines) -> None:
    path.write_text("".join(lines))


def test_whole_log_reads_as_a_run(tmp_path, log_lines):
    path = tmp_path / "track.jsonl"
    _write(path, log_lines)
    run = read_jsonl_log(path)
    assert run.layout == "jsonl" and run.snapshots == [] and run.warnings == []
    assert [s.meta.step for s in run.stats] == [1, 2, 3, 4, 5, 6]
    first = run.stats[0].params["0.weight"]
    assert first.dot_prev is None and first.grad_norm_sq > 0 and first.norm_sq_before > 0
    second = run.stats[1].params["0.weight"]
    # consecutive steps: the previous record's |w|^2 is this step's |w|^2 before the update
    assert second.norm_sq_before == pytest.approx(run.stats[0].params["0.weight"].norm_sq, rel=1e-6)
    assert second.diff_sq == second.update_norm_sq
    group = run.stats[0].meta.param_groups[0]
    assert group.lr == 0.1 and group.momentum == 0.9 and group.weight_decay == 5e-4
    assert "0.weight" in group.params
    assert read_jsonl_log(tmp_path).stats[-1].meta.step == 6  # the directory holding one log


def test_sparse_logs_do_not_invent_previous_snapshot_fields(tmp_path):
    path = tmp_path / "t.jsonl"
    _train_log(path, steps=6, every=3)
    stats = read_jsonl_log(path).stats
    assert [s.meta.step for s in stats] == [3, 6]
    assert all(p.dot_prev is None and p.diff_sq is None for p in stats[1].params.values())
    assert all(p.update_norm_sq is not None for p in stats[1].params.values())


def test_partial_last_line_is_ignored_with_a_warning(tmp_path, log_lines):
    path = tmp_path / "t.jsonl"
    _write(path, log_lines[:-1] + [log_lines[-1][: len(log_lines[-1]) // 2]])
    run = read_jsonl_log(path)
    assert [s.meta.step for s in run.stats] == [1, 2, 3, 4, 5]
    assert any("partial last line" in w for w in run.warnings)
    assert not any("corrupt" in w for w in run.warnings)


def test_last_line_without_newline_but_whole_is_kept(tmp_path, log_lines):
    path = tmp_path / "t.jsonl"
    _write(path, log_lines[:-1] + [log_lines[-1].rstrip("\n")])
    assert [s.meta.step for s in read_jsonl_log(path).stats] == [1, 2, 3, 4, 5, 6]


def test_corrupt_lines_are_skipped_counted_and_reported(tmp_path, log_lines):
    bad_length = json.loads(log_lines[3])
    bad_length["w_sq"] = bad_length["w_sq"][:-1]
    damaged = (log_lines[:2] + ["{not json at all\n", "\x00\x00\xff garbage\n",
                                json.dumps(bad_length) + "\n", "[1, 2]\n", "\n"]
               + log_lines[4:])
    path = tmp_path / "t.jsonl"
    path.write_bytes("".join(damaged).encode("utf-8", errors="surrogateescape"))
    log = load_live_log(path)
    assert [r.step for r in log.records] == [1, 4, 5, 6]
    assert log.corrupt_lines == 4
    assert "skipped 4 corrupt line(s)" in log.warnings[0] and "line 3" in log.warnings[0]
    assert [s.meta.step for s in read_jsonl_log(path).stats] == [1, 4, 5, 6]


def test_resumed_run_appending_to_the_log_supersedes_replayed_steps(tmp_path, log_lines):
    # a run resumed from its step-3 checkpoint appends a new header and steps 4.. again
    replay = [json.loads(line) for line in log_lines[4:6]]
    for record in replay:
        record["w_sq"] = [v * 2 for v in record["w_sq"]]
    path = tmp_path / "t.jsonl"
    _write(path, log_lines + [log_lines[0]] + [json.dumps(r) + "\n" for r in replay])
    log = load_live_log(path)
    assert [r.step for r in log.records] == [1, 2, 3, 4, 5]
    assert log.records[3].stats["w_sq"][0] == pytest.approx(2 * json.loads(log_lines[4])["w_sq"][0])
    assert log.superseded == 3 and any("superseded" in w for w in log.warnings)


def test_a_new_model_in_the_same_log_starts_over(tmp_path, log_lines):
    other = tmp_path / "other.jsonl"
    other_lines = _train_log(other, steps=2, model=nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    path = tmp_path / "t.jsonl"
    _write(path, log_lines + other_lines)
    log = load_live_log(path)
    assert log.header.names == ["1.weight", "1.bias"] and [r.step for r in log.records] == [1, 2]
    assert any("different parameters" in w for w in log.warnings)


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"   \n\n", "empty"),
    (b'{"type": "step", "step": 1}\n', "not a normscope tracker log"),
    (b"\x89PNG\r\n\x1a\n\x00\x00binary", "not a normscope tracker log"),
])
def test_unusable_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "t.jsonl"
    path.write_bytes(content)
    with pytest.raises(BadInputError, match=message):
        read_jsonl_log(path)
    assert path.read_bytes() == content  # nothing the user has is modified


def test_header_only_and_missing_paths(tmp_path, log_lines):
    path = tmp_path / "t.jsonl"
    _write(path, log_lines[:1])
    with pytest.raises(BadInputError, match="no step records yet"):
        read_jsonl_log(path)
    with pytest.raises(BadInputError, match="no normscope tracker log"):
        read_jsonl_log(tmp_path / "missing")
    _write(tmp_path / "second.jsonl", log_lines)
    with pytest.raises(BadInputError, match="2 tracker logs"):
        find_log_file(tmp_path)
    assert is_jsonl_log(path) and not is_jsonl_log(tmp_path / "missing")


def test_follower_reads_only_whole_lines(tmp_path, log_lines):
    path = tmp_path / "t.jsonl"
    follower = LogFollower(path)
    assert follower.poll() == []  # not there yet
    half = len(log_lines[1]) // 2
    _write(path, [log_lines[0], log_lines[1][:half]])
    assert follower.poll() == [] and follower.log.header is not None
    offset = follower.offset
    with open(path, "a") as f:
        f.write(log_lines[1][half:] + log_lines[2])
    assert [r.step for r in follower.poll()] == [1, 2]
    assert follower.offset == len("".join(log_lines[:3]).encode()) > offset
    assert follower.poll() == [] and follower.log.corrupt_lines == 0


def test_follower_restarts_on_truncation(tmp_path, log_lines):
    path = tmp_path / "t.jsonl"
    _write(path, log_lines)
    follower = LogFollower(path)
    assert len(follower.poll()) == 6
    other = _train_log(tmp_path / "new.jsonl", steps=2, seed=1)
    with open(path, "r+") as f:  # same inode, rewritten shorter: a new run reusing the path
        f.truncate(0)
        f.write("".join(other))
    new = follower.poll()
    assert [r.step for r in new] == [1, 2] and follower.restarts == 1
    assert [r.step for r in follower.log.records] == [1, 2]
    assert follower.log.header.run_id == "seed1"


def test_follower_restarts_on_rotation_to_a_new_inode(tmp_path, log_lines):
    path = tmp_path / "t.jsonl"
    _write(path, log_lines[:4])
    follower = LogFollower(path)
    assert len(follower.poll()) == 3
    os.rename(path, tmp_path / "t.jsonl.1")
    assert follower.poll() == []  # gone until the writer recreates it
    other = _train_log(tmp_path / "new.jsonl", steps=4, seed=2)
    _write(path, other + ["x" * 10])  # a bigger new file, with a line still being written
    assert follower.restarts == 0
    assert [r.step for r in follower.poll()] == [1, 2, 3, 4]
    assert follower.restarts == 1 and follower.log.header.run_id == "seed2"


def test_copytruncate_rotation_keeps_the_header_and_continues(tmp_path, log_lines):
    path = tmp_path / "t.jsonl"
    _write(path, log_lines[:4])
    follower = LogFollower(path)
    assert len(follower.poll()) == 3
    with open(path, "r+") as f:  # logrotate copytruncate: emptied, then the writer goes on
        f.truncate(0)
    follower.poll()
    with open(path, "a") as f:
        f.write("".join(log_lines[4:]))
    assert [r.step for r in follower.poll()] == [4, 5, 6]
    assert [r.step for r in follower.log.records] == [1, 2, 3, 4, 5, 6]


def test_registry_opens_logs_and_tensorboard_dirs(tmp_path, log_lines):
    from normscope.api import load_trajectory
    from normscope.sources import detect_layout

    (tmp_path / "run").mkdir()
    _write(tmp_path / "run" / "track.jsonl", log_lines)
    assert detect_layout(str(tmp_path / "run")).name == "jsonl"
    trajectory = load_trajectory(tmp_path / "run" / "track.jsonl")
    assert trajectory.layout == "jsonl" and trajectory.table["step"].max() == 6
    assert trajectory.table["grad_norm"].notna().all()


def test_subsampling_a_log_does_not_pair_one_step_updates_with_far_snapshots(tmp_path, log_lines):
    from normscope.api import load_trajectory

    _write(tmp_path / "track.jsonl", log_lines)
    every_step = load_trajectory(tmp_path / "track.jsonl").table
    assert every_step["angle_rad"].notna().sum() > 0  # consecutive records: per-step angles
    sparse = load_trajectory(tmp_path / "track.jsonl", every=2).table
    assert sorted(set(sparse["step"])) == [1, 3, 5, 6]
    assert sparse["angle_rad"].isna().all()  # the log cannot tell the angle across 2 steps
    assert sparse["update_norm"].notna().all()  # the step's own update is still known
