"""The config file's reading keys (include, exclude, every, device) read a run the same way in every
command that reads one: analyze, recommend, report and check show the parameters and snapshots the
file chose (watch its parameters), a flag beats NORMSCOPE_* variables, which beat the file, and a bad
file is one line and exit 2 in each of them."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
from typer.testing import CliRunner

from normscope.cli import app

CONFIG = 'include = ["block*"]\nexclude = ["*.running_*"]\nevery = 3\ndevice = "cpu"\n'


@pytest.fixture(scope="module")
def project(tmp_path_factory, sample_runs_dir):
    """A copy of the SGD sample run in a directory of its own, away from the
    repository's pyproject.toml."""
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(sample_runs_dir / "digits_bn_cnn_sgd", root / "run")
    return root


def _invoke(args, *, env=None):
    clean = {"NORMSCOPE_INCLUDE": None, "NORMSCOPE_EXCLUDE": None, "NORMSCOPE_EVERY": None,
             "NORMSCOPE_DEVICE": None, "NORMSCOPE_CONFIG": None}  # fmt: skip
    return CliRunner().invoke(app, args, env={**clean, **(env or {})})


def _csv_rows(result):
    assert result.exit_code == 0, result.output
    return list(csv.DictReader(io.StringIO(result.stdout)))


def _params_and_snapshots(rows):
    return sorted({r["param"] for r in rows}), sorted({int(r["step"]) for r in rows})


def test_analyze_reads_the_run_as_the_file_says_and_as_the_same_flags_do(project, monkeypatch):
    monkeypatch.chdir(project)
    everything = _params_and_snapshots(_csv_rows(_invoke(["analyze", "run", "-f", "csv"])))
    (project / "normscope.toml").write_text(CONFIG, encoding="utf-8")
    try:
        from_file = _params_and_snapshots(_csv_rows(_invoke(["analyze", "run", "-f", "csv"])))
    finally:
        (project / "normscope.toml").unlink()
    flags = ["--include", "block*", "--exclude", "*.running_*", "--every", "3", "--device", "cpu"]
    from_flags = _params_and_snapshots(_csv_rows(_invoke(["analyze", "run", "-f", "csv", *flags])))
    assert from_file == from_flags
    params, snapshots = from_file
    assert params and all(p.startswith("block") and ".running_" not in p for p in params)
    assert set(params) < set(everything[0])
    assert len(snapshots) < len(everything[1]) and snapshots[-1] == everything[1][-1]  # the last is kept


def test_a_flag_beats_the_variable_which_beats_the_file(project, monkeypatch):
    monkeypatch.chdir(project)
    (project / "normscope.toml").write_text('include = ["block1.*"]\nevery = 3\n', encoding="utf-8")
    try:
        file_only = _params_and_snapshots(_csv_rows(_invoke(["analyze", "run", "-f", "csv"])))
        env = _params_and_snapshots(_csv_rows(_invoke(["analyze", "run", "-f", "csv"],
                                                      env={"NORMSCOPE_INCLUDE": "head.*,block2.*"})))
        flag = _params_and_snapshots(_csv_rows(_invoke(["analyze", "run", "-f", "csv", "--include", "head.*",
                                                        "--every", "1"],
                                                       env={"NORMSCOPE_INCLUDE": "block2.*"})))
    finally:
        (project / "normscope.toml").unlink()
    assert {p.split(".")[0] for p in file_only[0]} == {"block1"}
    assert {p.split(".")[0] for p in env[0]} == {"head", "block2"}
    assert env[1] == file_only[1]  # every = 3 from the file still holds
    assert {p.split(".")[0] for p in flag[0]} == {"head"}
    assert len(flag[1]) > len(file_only[1])  # --every 1 beats the file's 3


def test_every_command_reads_the_parameters_the_file_chose(project, tmp_path):
    config = tmp_path / "reading.toml"
    config.write_text(CONFIG + "\n[check]\nmax_growth = 1000.0\n", encoding="utf-8")
    run = str(project / "run")
    shown = _params_and_snapshots(_csv_rows(_invoke(["analyze", run, "-f", "csv", "--config", str(config)])))

    checked = _invoke(["check", run, "--config", str(config), "-f", "json"])
    assert checked.exit_code == 0, checked.output
    findings = json.loads(checked.stdout)["findings"]
    gated = sorted({f["param"] for f in findings if f["rule"] == "growth"})
    assert gated and set(gated) <= set(shown[0])

    advice_file = _invoke(["recommend", run, "--config", str(config), "-f", "json", "--include-kinds", "all"])
    flags = ["--include", "block*", "--exclude", "*.running_*", "--every", "3"]
    advice_flags = _invoke(["recommend", run, *flags, "-f", "json", "--include-kinds", "all"])
    advice_all = _invoke(["recommend", run, "-f", "json", "--include-kinds", "all"])
    assert advice_file.exit_code == advice_flags.exit_code == advice_all.exit_code == 0, advice_file.output
    assert json.loads(advice_file.stdout) == json.loads(advice_flags.stdout)
    assert json.loads(advice_file.stdout) != json.loads(advice_all.stdout)

    document = tmp_path / "report.md"
    reported = _invoke(["report", run, "-o", str(document), "--config", str(config)])
    assert reported.exit_code == 0, reported.output
    text = document.read_text(encoding="utf-8")
    assert all(p in text for p in shown[0])
    assert "head.weight" not in text and "running_mean" not in text


def test_watch_follows_the_parameters_the_file_chose(sample_runs_dir, tmp_path):
    shutil.copytree(sample_runs_dir / "digits_bn_cnn_live", tmp_path / "live")
    (tmp_path / "normscope.toml").write_text('include = ["head.*"]\nevery = 5\n', encoding="utf-8")
    watched = _invoke(["watch", str(tmp_path / "live"), "--once"])
    assert watched.exit_code == 0, watched.output
    assert "head.weight" in watched.stdout and "block1" not in watched.stdout
    assert "1380 record(s)" in watched.stdout  # a live view shows every record: `every` is not its key
    flagged = _invoke(["watch", str(tmp_path / "live"), "--once", "--include", "block1.*"])
    assert flagged.exit_code == 0, flagged.output
    assert "block1.conv.weight" in flagged.stdout and "head.weight" not in flagged.stdout


@pytest.mark.parametrize("command", [["analyze"], ["recommend"], ["check"], ["report", "-o", "{tmp}/r.md"],
                                     ["watch", "--once"]])
def test_a_bad_config_file_is_one_line_and_exit_2_in_every_command(project, tmp_path, command):
    config = tmp_path / "bad.toml"
    config.write_text("bogus = 1\nevery = 0\n", encoding="utf-8")
    args = [a.format(tmp=tmp_path) for a in command]
    result = _invoke([*args, str(project / "run"), "--config", str(config)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and str(config) in lines[0] and "bogus" in lines[0]
    assert not (tmp_path / "r.md").exists()
