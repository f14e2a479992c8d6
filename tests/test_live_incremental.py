"""A followed tracker log's trajectory, grown record by record, equals the log read whole, and the
live view's frame, grown the same way, equals the frame of the whole analysis."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import normscope
import normscope.live as live

from normscope.errors import BadInputError
from normscope.live.view import LiveView
from normscope.analysis.runner import RunOptions, analyze_run
from normscope.api import select, trajectory_from_run
from normscope.live.source import LiveSource
from normscope.live.log import live_log_run, load_live_log

SAMPLE_LOG = Path(__file__).resolve().parent.parent / "sample_runs" / "digits_bn_cnn_live" / "track.jsonl"


def _read_whole(path, include=(), exclude=()):
    return trajectory_from_run(select(live_log_run(load_live_log(path)), include, exclude))


def _same(grown, whole):
    assert grown.table.equals(whole.table)
    assert grown.snapshots == whole.snapshots
    assert (grown.warnings, grown.layout, grown.root, grown.ordering) == (
        whole.warnings, whole.layout, whole.root, whole.ordering)


def test_growing_log_gives_the_whole_logs_trajectory(tmp_path):
    lines = SAMPLE_LOG.read_bytes().splitlines(keepends=True)
    log = tmp_path / "track.jsonl"
    log.write_bytes(b"".join(lines[:200]))
    source = LiveSource(log)
    source.poll()
    at = 200
    for upto in (201, 460, 700):
        with open(log, "ab") as f:
            f.write(b"".join(lines[at:upto]))
        at = upto
        _same(source.poll(), _read_whole(log))
    # a resumed run: its header again, then steps from before the last one supersede those records
    with open(log, "ab") as f:
        f.write(lines[0] + b"".join(lines[300:340]))
    grown = source.poll()
    _same(grown, _read_whole(log))
    assert grown.snapshots[-1].step < 700 and any("superseded" in w for w in grown.warnings)


def _scratch_frame(path, options, include=(), exclude=()):
    return analyze_run(_read_whole(path, include, exclude), options).live


@pytest.mark.parametrize("options", [RunOptions(probe=False),
                                     RunOptions(probe=False, recent=23, total_epochs=60),
                                     RunOptions(probe=False, steps_per_epoch=23.0)],
                         ids=["defaults", "recent-23-budget-60", "steps-per-epoch"])
def test_incremental_frame_equals_a_frame_from_scratch(tmp_path, options):
    """`LiveView` takes in only the new records; at every point its frame is the one the whole
    analysis of the log so far gives: before the first epoch ends, around the LR cut at epoch 45
    (record 1035), and at the end, in steps of one record, part of an epoch and many epochs."""
    lines = SAMPLE_LOG.read_bytes().splitlines(keepends=True)
    _grow_and_compare(tmp_path / "track.jsonl", lines,
                      (2, 3, 24, 71, 94, 300, 1034, 1035, 1036, 1037, 1058, 1200, len(lines)), options)


def test_incremental_frame_of_a_sparse_log(tmp_path):
    """Every 4th step logged (`every=4`): no against-the-previous-record fields, the same frames."""
    lines = SAMPLE_LOG.read_bytes().splitlines(keepends=True)
    sparse = [lines[0], *lines[4::4]]
    _grow_and_compare(tmp_path / "track.jsonl", sparse, (2, 5, 40, 259, 261, len(sparse)),
                      RunOptions(probe=False))


def test_a_followed_log_with_filters_is_the_whole_log_with_them(tmp_path):
    """`watch --include/--exclude`: the records taken in, filtered as they arrive, give the
    trajectory and the frames of the whole log filtered by `select`, as analyze filters it."""
    lines = SAMPLE_LOG.read_bytes().splitlines(keepends=True)
    include, exclude = ("block*", "head.weight"), ("*.bias",)
    _grow_and_compare(tmp_path / "track.jsonl", lines, (2, 24, 95, 1035, 1036, len(lines)),
                      RunOptions(probe=False), include=include, exclude=exclude)
    grown = LiveSource(tmp_path / "track.jsonl", include=include, exclude=exclude).poll()
    _same(grown, _read_whole(tmp_path / "track.jsonl", include, exclude))
    params = set(grown.table["param"])
    assert params and "head.weight" in params and not any(p.endswith(".bias") for p in params)
    assert params < set(_read_whole(tmp_path / "track.jsonl").table["param"])


def test_a_followed_log_whose_filters_match_nothing_says_so(tmp_path):
    log = tmp_path / "track.jsonl"
    log.write_bytes(SAMPLE_LOG.read_bytes())
    with pytest.raises(BadInputError, match="no parameter matches the filters"):
        LiveSource(log, include=("nothing.*",)).poll()


def _grow_and_compare(log, lines, points, options, include=(), exclude=()):
    log.write_bytes(lines[0])
    source, view = LiveSource(log, include=include, exclude=exclude), LiveView(options)
    at = 1
    for upto in points:
        with open(log, "ab") as f:
            f.write(b"".join(lines[at:upto]))
        at = upto
        trajectory = source.poll()
        frame = view.frame(trajectory)
        assert view.follows_incrementally  # the fast path, not the whole analysis again
        # repr: the floats to the last bit, and NaN equal to NaN
        assert repr(frame) == repr(_scratch_frame(log, options, include, exclude)), f"after record {upto - 1}"
        assert repr(view.frame(trajectory)) == repr(frame)  # a refresh with nothing new


def test_view_starts_over_when_the_log_does(tmp_path):
    lines = SAMPLE_LOG.read_bytes().splitlines(keepends=True)
    log = tmp_path / "track.jsonl"
    log.write_bytes(b"".join(lines[:400]))
    options = RunOptions(probe=False)
    source, view = LiveSource(log), LiveView(options)
    view.frame(source.poll())
    # a resumed run superseding records from step 300 on: the table is not the old one grown
    with open(log, "ab") as f:
        f.write(lines[0] + b"".join(lines[300:320]))
    assert repr(view.frame(source.poll())) == repr(_scratch_frame(log, options))
    assert view.follows_incrementally


def test_the_live_package_names_what_its_modules_define():
    assert normscope.track is live.track and normscope.Tracker is live.Tracker
    for name in live.__all__:
        if name in ("NormscopeCallback", "NormscopeTrainerCallback"):
            continue  # they import their framework: tests/test_integrations.py
        module = importlib.import_module(live._LAZY[name])
        assert getattr(live, name) is getattr(module, name)
