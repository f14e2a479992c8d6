"""`normscope recommend` as a command: formats, files, plot, and one-line errors with exit code 2.

The trajectory loader is replaced by hand-built trajectories here (sources and engine have their own
tests); the end-to-end tests on the committed sample runs are in test_recommend_sample_runs.py.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from _bounce_tables import bounce_curve, trajectory_from_norms
from typer.testing import CliRunner

import normscope.api
from normscope.analysis.epochs import epoch_series
from normscope.analysis.recommend import recommend
from normscope.cli import app


@pytest.fixture
def run_with(monkeypatch):
    def use(traj):
        monkeypatch.setattr(normscope.api, "load_trajectory", lambda path, **kw: traj)
        return traj

    return use


def _invoke(*args):
    return CliRunner().invoke(app, ["recommend", "some/run", *args])


def test_json_carries_decay_epochs_and_matches_the_library(run_with):
    traj = run_with(trajectory_from_norms({"conv": bounce_curve()}, steps_per_epoch=1000))
    result = _invoke("--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    expected = recommend(epoch_series(traj.table))
    assert doc["schema_version"] == 1
    assert doc["decay_epochs"] == list(expected.decay_epochs) == [26, 50]
    assert doc["multistep"] == expected.multistep
    assert doc["verdict"]["status"] == expected.verdict.status
    assert len(doc["schedule"]) == expected.total_epochs
    assert doc["robust"]["bounces"][0]["minimum_epoch"] == 15


def test_table_csv_texp_and_files(run_with, tmp_path):
    run_with(trajectory_from_norms({"conv": bounce_curve()}, steps_per_epoch=1000))
    table = _invoke("--decay-factor", "0.2")
    assert table.exit_code == 0, table.output
    assert "MultiStepLR(optimizer, milestones=[26, 50], gamma=0.2)" in table.stdout
    # no --total-epochs: the run is finished, and the answer is retrospective
    assert "ABEL would have decayed at epoch 26, 50." in table.stdout and "DECAY NOW" not in table.stdout

    out = tmp_path / "lr.csv"
    csv = _invoke("--format", "csv", "--texp", "-o", str(out))
    assert csv.exit_code == 0, csv.output
    assert csv.stdout == ""
    lines = out.read_text().splitlines()
    assert lines[0] == "epoch,lr,lr_exact_abel,lr_recorded,norm_sq_at_start,texp_lr"
    assert len(lines) == 1 + 59
    row26 = lines[1 + 26].split(",")
    assert float(row26[1]) == pytest.approx(0.01) and float(lines[1 + 25].split(",")[1]) == pytest.approx(0.1)
    assert float(row26[5]) > float(row26[1])  # TEXP's LR has grown meanwhile


def test_plot_is_written(run_with, tmp_path):
    run_with(trajectory_from_norms({"conv": bounce_curve()}, steps_per_epoch=1000))
    png = tmp_path / "bounce.png"
    result = _invoke("--format", "json", "--plot", str(png))
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[:2] == (870, 1500)
    assert "plot written" in result.stderr and json.loads(result.stdout)


@pytest.mark.parametrize(
    ("traj_kwargs", "norms", "args", "message"),
    [
        ({}, np.array([3.0, 2.0]), (), "needs at least 3"),
        ({"record_epoch": False}, bounce_curve(), (), "record no epoch; pass --steps-per-epoch"),
        ({}, bounce_curve(), ("--lr", "0"), "--lr must be a positive number"),
        ({"lrs": 0.0}, bounce_curve(), (), "learning rate is zero"),
        ({}, bounce_curve(), ("--include-kinds", "kernels"), "unknown tensor kind"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run_with, traj_kwargs, norms, args, message):
    run_with(trajectory_from_norms({"conv": norms}, **traj_kwargs))
    result = _invoke(*args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("normscope: error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_texp_on_adamw_is_skipped_with_a_note_and_the_recommendation_stands(run_with):
    run_with(trajectory_from_norms({"conv": bounce_curve()}, optimizer="AdamW"))
    result = _invoke("--texp")
    assert result.exit_code == 0, result.output
    assert "Where to decay the LR" in result.stdout and "TEXP" not in result.stdout
    assert ("normscope: note: --texp skipped: the TEXP equivalence holds for SGD (with "
            "momentum); this run used AdamW") in result.stderr.splitlines(), result.stderr


def test_help_lists_recommend_without_heavy_imports():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from normscope.cli import app\n"
        "result = CliRunner().invoke(app, ['recommend', '--help'])\n"
        "assert result.exit_code == 0 and '--decay-factor' in result.output, result.output\n"
        "heavy = [m for m in ('torch', 'pandas', 'matplotlib', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_threshold_caption_states_where_h_comes_from(sgd_run_dir):
    # h is the fitted noise model's false-alarm rise, not a fixed multiple of σ: the caption's
    # multiple must be h/σ as printed
    import re

    result = CliRunner().invoke(app, ["recommend", str(sgd_run_dir)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    line = next(l for l in result.output.splitlines() if "threshold h =" in l)
    sigma = float(re.search(r"noise σ = ([0-9.e+-]+)", line).group(1))
    h = float(re.search(r"threshold h = ([0-9.e+-]+)", line).group(1))
    multiple = float(re.search(r"probability 0\.01 = ([0-9.]+)σ", line).group(1))
    assert multiple == pytest.approx(h / sigma, abs=0.06)


def test_json_gives_each_decay_its_interval_and_the_terminal_shows_it(run_with):
    """A noisy bounce: the bounce's decay comes with the robust detector's 90 % interval over
    repeats of the run and its confidence (the numbers the detector itself reports); the budget
    decay is a point."""
    from _bounce_tables import noisy

    traj = run_with(trajectory_from_norms({"conv": noisy(bounce_curve(), 0.01, seed=3)}, steps_per_epoch=1000))
    expected = recommend(epoch_series(traj.table))
    bounce = next(b for b in expected.robust.bounces if b.decay_epoch in expected.decay_epochs)
    doc = json.loads(_invoke("--format", "json").stdout)
    intervals = doc["decay_intervals"]
    assert [d["epoch"] for d in intervals] == doc["decay_epochs"] == list(expected.decay_epochs)
    first, last = intervals[0], intervals[-1]
    assert first["from"] == "robust bounce" and first["epoch"] == bounce.decay_epoch
    assert [first["low"], first["high"]] == list(bounce.decay_interval)
    assert first["low"] <= first["epoch"] <= first["high"] and first["high"] - first["low"] <= 10
    assert first["interval_confidence"] == 0.9 and first["confidence"] == pytest.approx(bounce.confidence)
    assert last["from"] == "budget" and last["low"] == last["high"] == last["epoch"]
    assert last["confidence"] is None
    table = _invoke().stdout
    assert (f"{bounce.decay_epoch} (90% interval {bounce.decay_interval[0]}–{bounce.decay_interval[1]}, "
            f"confidence {bounce.confidence:.2f})") in table
    assert f"{last['epoch']} (budget)" in table
