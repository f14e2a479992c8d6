"""A followed tracker log's trajectory, grown record by record, equals the log read whole."""

from __future__ import annotations

from pathlib import Path

from normscope.api import trajectory_from_run
from normscope.live_source import LiveSource
from normscope.sources.jsonl_log import live_log_run, load_live_log

SAMPLE_LOG = Path(__file__).resolve().parent.parent / "sample_runs" / "digits_bn_cnn_live" / "track.jsonl"


def _read_whole(path):
    return trajectory_from_run(live_log_run(load_live_log(path)))


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
