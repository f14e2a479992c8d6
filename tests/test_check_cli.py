"""`normscope check` and `normscope report` end to end: exit codes, files, CI outputs, one-line errors."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET

import pytest
import torch
from reports_support import save_states, train_states, with_nan
from typer.testing import CliRunner

from normscope.cli import app


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A clean run, a copy with a NaN injected, in a project dir with its own normscope.toml."""
    states, _ = train_states(epochs=6)
    root = tmp_path_factory.mktemp("project")
    save_states(states, root / "runs" / "clean")
    save_states(with_nan(states, snapshot=3, param="3.weight"), root / "runs" / "nan")
    (root / "normscope.toml").write_text("[check]\nmax_growth = 50.0\nmin_growth = 0.01\n", encoding="utf-8")
    return root


def invoke(args, env=None):
    return CliRunner().invoke(app, ["check", *map(str, args)], env={"GITHUB_ACTIONS": "", **(env or {})})


def test_clean_run_exits_zero_and_writes_parseable_junit(runs, tmp_path):
    junit = tmp_path / "check.xml"
    result = invoke([runs / "runs" / "clean", "--junit", junit])
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.stdout
    suite = ET.parse(junit).getroot().find("testsuite")
    assert int(suite.get("failures")) == 0
    rules = {c.get("classname") for c in suite.findall("testcase")}
    assert rules == {"normscope.nonfinite", "normscope.growth", "normscope.collapse"}
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["config"] == str(runs / "normscope.toml")


def test_injected_nan_exits_one_and_names_the_parameter(runs):
    result = invoke([runs / "runs" / "nan", "--format", "json"])
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    failed = [f for f in doc["findings"] if f["status"] == "error"]
    assert {(f["rule"], f["param"]) for f in failed} >= {("nonfinite", "3.weight")}
    nan = next(f for f in failed if f["rule"] == "nonfinite")
    assert nan["snapshot"] == 3 and nan["path"].endswith(".pt")


def test_flag_overrides_the_file_and_fails_the_run(runs):
    result = invoke([runs / "runs" / "clean", "--max-growth", "1.0", "--format", "json"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["settings_from"]["check.max_growth"] == "flag --max-growth"
    assert doc["settings_from"]["check.min_growth"] == f"{runs / 'normscope.toml'}:3"


def test_an_unreadable_baseline_is_named_as_the_baseline_with_where_it_was_set(runs, tmp_path):
    """Two runs are read; the line says it is the baseline that failed, and which flag or config line
    named it, before what is wrong with it."""
    flagged = invoke([runs / "runs" / "clean", "--baseline", tmp_path / "gone"])
    assert flagged.exit_code == 2
    assert flagged.stderr == f"normscope: error: baseline (flag --baseline): {tmp_path / 'gone'} does not exist\n"
    project = tmp_path / "project"
    shutil.copytree(runs / "runs" / "clean", project / "run")
    (project / "normscope.toml").write_text('[check]\nbaseline = "empty"\n', encoding="utf-8")
    (project / "empty").mkdir()
    (project / "empty" / "w.pt").write_bytes(b"")
    configured = invoke([project / "run"])
    assert configured.exit_code == 2
    assert configured.stderr.startswith(f"normscope: error: baseline ({project / 'normscope.toml'}:2): no checkpoints")
    assert configured.stderr.count("\n") == 1


def test_baseline_flag_compares_two_runs(runs, tmp_path):
    same = invoke([runs / "runs" / "clean", "--baseline", runs / "runs" / "clean", "--format", "json"])
    assert same.exit_code == 0, same.output
    assert "baseline" in json.loads(same.stdout)["rules"]
    # a copy whose last checkpoint has one layer scaled by 1.3: only that layer drifts
    changed = tmp_path / "changed"
    shutil.copytree(runs / "runs" / "clean", changed)
    last = max(changed.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    blob = torch.load(last, weights_only=True)
    blob["state_dict"]["0.weight"] *= 1.3
    torch.save(blob, last)
    result = invoke([changed, "--baseline", runs / "runs" / "clean", "--format", "json"])
    assert result.exit_code == 1
    drifted = [f for f in json.loads(result.stdout)["findings"] if f["rule"] == "baseline" and not f["passed"]]
    assert [f["param"] for f in drifted] == ["0.weight"]
    assert drifted[0]["value"] == pytest.approx(0.3, rel=1e-6)


def test_github_actions_annotations_and_step_summary(runs, tmp_path):
    summary = tmp_path / "summary.md"
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_WORKSPACE": str(runs)}
    result = invoke([runs / "runs" / "nan"], env=env)
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("::")]
    assert any(line.startswith("::error file=runs/nan/step_") and "title=normscope nonfinite%3A 3.weight::" in line
               for line in lines), result.stderr
    assert "normscope check failed" in summary.read_text(encoding="utf-8")


@pytest.mark.parametrize("toml, needle", [
    ("[check]\nmax_growht = 2\n", "unknown key 'check.max_growht'"),
    ("[check]\nmax_growth = \"2x\"\n", "key 'check.max_growth': must be number"),
])
def test_bad_config_exits_two_with_one_line(runs, tmp_path, toml, needle):
    config = tmp_path / "bad.toml"
    config.write_text(toml, encoding="utf-8")
    result = invoke([runs / "runs" / "clean", "--config", config])
    assert result.exit_code == 2
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("normscope: error: ") and needle in line and str(config) in line


def test_bad_input_exits_two(tmp_path):
    result = invoke([tmp_path / "no-such-run"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    tmp_path.joinpath("some-run").mkdir()
    bad_rule = invoke([tmp_path / "some-run", "--warn", "growht"])
    assert bad_rule.exit_code == 2 and "unknown rule(s) growht" in bad_rule.stderr


def test_report_command_writes_html_and_markdown(runs, tmp_path):
    runner = CliRunner()
    html = runner.invoke(app, ["report", str(runs / "runs" / "clean"), "-o", str(tmp_path / "r.html")])
    assert html.exit_code == 0, html.output
    assert html.stdout.strip() == str(tmp_path / "r.html")
    assert "data:image/png;base64," in (tmp_path / "r.html").read_text(encoding="utf-8")
    md = runner.invoke(app, ["report", str(runs / "runs" / "clean"), "-o", str(tmp_path / "r.md")])
    assert md.exit_code == 0, md.output
    assert (tmp_path / "r_norms.png").is_file() and (tmp_path / "r.md").is_file()
    wrong = runner.invoke(app, ["report", str(runs / "runs" / "clean"), "-o", str(tmp_path / "r.pdf")])
    assert wrong.exit_code == 2 and "name it .html or .md" in wrong.stderr


def test_check_reads_runs_with_the_reading_options_of_analyze(tmp_path):
    # torch files holding an argparse.Namespace: refused (exit 2, the flag named), then checked
    # with --recover-unsafe; the NaN they hold fails the gate as in any other run
    import argparse

    weight = torch.ones(4, 4)
    for epoch in range(3):
        if epoch == 2:
            weight[0, 0] = float("nan")
        torch.save({"model": {"fc.weight": weight.clone() * (1 + epoch)}, "epoch": epoch,
                    "args": argparse.Namespace(lr=0.1)}, tmp_path / f"epoch_{epoch}.pt")
    refused = invoke([tmp_path])
    assert refused.exit_code == 2 and "--recover-unsafe" in refused.stderr
    checked = invoke([tmp_path, "--recover-unsafe", "--format", "json"])
    assert checked.exit_code == 1, checked.output
    failed = {f["rule"] for f in json.loads(checked.stdout)["findings"] if not f["passed"]}
    assert failed == {"nonfinite"}


def test_check_reads_tensorboard_events_with_a_user_tag_pattern(tmp_path):
    SummaryWriter = pytest.importorskip("torch.utils.tensorboard").SummaryWriter
    writer = SummaryWriter(str(tmp_path))
    for step in range(5):
        writer.add_scalar("norms/fc.weight", 2.0 + step, step)
    writer.close()
    passed = invoke([tmp_path, "--tag-pattern", r"^norms/(?P<param>.+)$", "--format", "json"])
    assert passed.exit_code == 0, passed.output
    grown = invoke([tmp_path, "--tag-pattern", r"^norms/(?P<param>.+)$", "--max-growth", "2", "--kind", "other"])
    assert grown.exit_code == 1, grown.output  # 6 / 2 = 3x
