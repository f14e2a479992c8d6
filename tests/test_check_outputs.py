"""JUnit XML (parsed back), GitHub annotations and their escaping, the job summary, JSON."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from reports_support import reduce_states, train_states

from normscope.check import run_check
from normscope.check.findings import CheckResult, Finding
from normscope.config import CheckConfig, Origin
from normscope.report.ci.github import (
    annotation,
    escape_data,
    escape_property,
    publish,
    summary_markdown,
)
from normscope.report.ci.junit import junit_xml
from normscope.report.machine.check_json import check_document


@pytest.fixture(scope="module")
def result():
    states, group = train_states(epochs=6)
    traj = reduce_states(states, group)
    norms = traj.table[traj.table["kind"] == "weight"].pivot(index="snapshot", columns="param", values="norm")
    limit = float((norms.iloc[-1] / norms.iloc[0]).median())
    config = CheckConfig(max_growth=limit, min_growth=0.5, max_total_norm=1e6, warn=("collapse",))
    return run_check(traj, config, run_path="runs/exp 1")


def test_junit_has_one_testcase_per_rule_and_parameter_and_parses_back(result, tmp_path):
    path = tmp_path / "check.xml"
    path.write_text(junit_xml(result), encoding="utf-8")
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == len(result.findings) == int(suite.get("tests"))
    names = {(c.get("classname"), c.get("name")) for c in cases}
    assert names == {(f"normscope.{f.rule}", f.subject) for f in result.findings}
    failed = {(c.get("classname"), c.get("name")) for c in cases if c.find("failure") is not None}
    assert failed == {(f"normscope.{f.rule}", f.subject) for f in result.errors}
    assert int(suite.get("failures")) == len(result.errors) > 0
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["run"] == "runs/exp 1" and "growth" in props["rules"]


def test_junit_escapes_markup_and_shows_control_characters_as_escapes():
    nasty = Finding("growth", "error", False, 'norm <grew> & "jumped"\x01 \u2192 x3', param="a<b>&c",
                    value=3.0, limit=2.0)
    text = junit_xml(CheckResult(findings=(nasty,), rules=("growth",), run_path="r&d"))
    case = ET.fromstring(text.split("\n", 1)[1]).find("testsuite/testcase")
    assert case.get("name") == "a<b>&c"
    failure = case.find("failure")
    assert failure.get("message") == 'norm <grew> & "jumped"\\x01 \u2192 x3'
    assert "limit: 2.0" in failure.text


def test_escaping_follows_the_workflow_command_rules():
    assert escape_data("100% done\r\nnext") == "100%25 done%0D%0Anext"
    assert escape_property("a:b,c%d\ne") == "a%3Ab%2Cc%25d%0Ae"
    assert escape_data("a:b,c") == "a:b,c"  # only properties escape : and ,


def test_annotation_points_at_the_config_line_that_set_the_limit(tmp_path):
    finding = Finding("growth", "error", False, "norm grew x3.1,\nover 50%", param="layer1.0:conv,w",
                      value=3.1, limit=2.0, path=str(tmp_path / "step_9.pt"), config_key="check.max_growth")
    origins = {"check.max_growth": Origin("file", file=str(tmp_path / "pyproject.toml"), line=12)}
    line = annotation(finding, origins, base=tmp_path)
    assert line == ("::error file=pyproject.toml,line=12,title=normscope growth%3A layer1.0%3Aconv%2Cw"
                    "::norm grew x3.1,%0Aover 50%25")
    assert annotation(finding, {}, base=tmp_path).startswith("::error file=step_9.pt,title=")
    warned = Finding("collapse", "warning", False, "shrank", param="p")
    assert annotation(warned).startswith("::warning title=normscope collapse%3A p::")


def test_publish_only_inside_actions_and_appends_the_summary(result, tmp_path):
    lines: list[str] = []
    assert not publish(result, {}, lines.append)
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n", encoding="utf-8")
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_WORKSPACE": str(tmp_path)}
    assert publish(result, env, lines.append)
    failing = [f for f in result.findings if not f.passed]
    assert len(lines) == len(failing) and all(line.startswith(("::error ", "::warning ")) for line in lines)
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("earlier step\n## :x: normscope check failed")
    assert text == "earlier step\n" + summary_markdown(result)
    for f in result.errors:
        assert f"`{f.subject}`" in text


def test_json_document_carries_every_finding(result):
    doc = json.loads(json.dumps(check_document(result), allow_nan=False))
    assert doc["passed"] is False and doc["exit_code"] == 1
    assert len(doc["findings"]) == len(result.findings)
    assert doc["counts"]["errors"] == len(result.errors)
    statuses = {f["status"] for f in doc["findings"]}
    assert "error" in statuses and "pass" in statuses


def test_junit_warnings_pass_with_their_message_in_system_out():
    warned = Finding("collapse", "warning", False, "norm shrank x0.3", param="p", value=0.3, limit=0.5)
    ok = Finding("collapse", "error", True, "norm shrank x0.9", param="q", value=0.9, limit=0.5)
    root = ET.fromstring(junit_xml(CheckResult(findings=(warned, ok), rules=("collapse",))).split("\n", 1)[1])
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert root.get("failures") == "0" and root.get("tests") == "2"
    assert cases["p"].find("failure") is None
    assert cases["p"].find("system-out").text.startswith("warning: norm shrank x0.3")
    assert list(cases["q"]) == []
