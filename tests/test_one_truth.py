"""One truth in every view: what `watch`, the `analyze` table, HTML and Markdown show is the JSON's
number, and a checkpoint directory and the live log of the same training agree.

`sample_runs/digits_bn_cnn_sgd` (a checkpoint per epoch) and `sample_runs/digits_bn_cnn_live` (the
tracker logging every step) are the same training (sample_runs/README.md). The tolerance between them is
the one docs/equilibrium.md states: the equilibrium ratios of a checkpoint directory and of a per-step
log of the same training agree within a factor of 1.5, and their statuses agree.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from normscope.report import quantities

SAMPLES = Path(__file__).resolve().parent.parent / "sample_runs"
SGD = SAMPLES / "digits_bn_cnn_sgd"
LIVE = SAMPLES / "digits_bn_cnn_live" / "track.jsonl"
LIGHTNING = SAMPLES / "digits_bn_cnn_lightning"
CROSS_SOURCE_FACTOR = 1.5


def _normscope(*args: object, columns: int = 200) -> str:
    env = {**os.environ, "COLUMNS": str(columns)}
    result = subprocess.run([sys.executable, "-m", "normscope", *map(str, args)], check=False,
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def equilibrium_json() -> dict[Path, dict]:
    """`analyze --equilibrium -f json` of each run, once."""
    return {run: json.loads(_normscope("analyze", run, "--equilibrium", "-f", "json"))
            for run in (SGD, LIVE, LIGHTNING) if run.exists()}


def _layers(document: dict) -> dict[str, dict]:
    return {layer["param"]: layer for layer in document["equilibrium"]["layers"]}


def _rows(text: str, first_cell: re.Pattern[str]) -> dict[str, list[str]]:
    """Table rows of a rich view, split on its column gaps (two spaces or more), keyed by their first cell."""
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in re.split(r"\s{2,}", line.strip())]
        if len(cells) > 2 and first_cell.fullmatch(cells[0]):
            rows[cells[0]] = cells
    return rows


def test_checkpoints_and_the_live_log_of_one_training_agree_on_equilibrium(equilibrium_json):
    if SGD not in equilibrium_json or LIVE not in equilibrium_json:
        pytest.skip("sample runs missing")
    checkpoints, live = _layers(equilibrium_json[SGD]), _layers(equilibrium_json[LIVE])
    assert set(checkpoints) == set(live) == {f"block{i}.conv.weight" for i in (1, 2, 3)}
    for param, from_checkpoints in checkpoints.items():
        from_log = live[param]
        assert from_checkpoints["status"] == from_log["status"], param
        for key in ("ratio", "settled_ratio"):
            a, b = from_checkpoints[key], from_log[key]
            assert 1 / CROSS_SOURCE_FACTOR <= a / b <= CROSS_SOURCE_FACTOR, (param, key, a, b)
        assert from_checkpoints["predicted_angle_per_step_rad"] == pytest.approx(
            from_log["predicted_angle_per_step_rad"], rel=1e-9)


@pytest.mark.parametrize("run", [SGD, LIVE, LIGHTNING], ids=lambda p: p.parent.name if p.suffix else p.name)
def test_watch_shows_the_equilibrium_numbers_of_analyze(run, equilibrium_json):
    if run not in equilibrium_json:
        pytest.skip("sample run missing")
    layers = _layers(equilibrium_json[run])
    shown = _rows(_normscope("watch", run, "--once"), re.compile(r"[\w.]+\.(weight|bias)"))
    not_invariant = {v["param"] for v in equilibrium_json[run]["invariance"] if v["verdict"] != "invariant"}
    assert layers and not_invariant & set(shown)
    header = ["param", "kind", "|w|", "vs start", "|g|", "cos(w,g)", None, "∠/step predicted", "ratio last",
              "equilibrium"]
    predicted, ratio, status = (header.index(name) for name in ("∠/step predicted", "ratio last", "equilibrium"))
    for param, cells in shown.items():
        layer = layers.get(param)
        if layer is None:  # no prediction and no ratio for a layer the analysis does not cover
            assert cells[predicted] == cells[ratio] == cells[status] == "–", cells
            continue
        assert cells[predicted] == quantities.angle(layer["predicted_angle_per_step_rad"]), cells
        assert cells[ratio] == quantities.ratio(layer["ratio"]), cells
        assert cells[status] == layer["status"], cells
    assert "head.weight" in shown and "head.weight" not in layers


@pytest.mark.parametrize("run", [SGD, LIVE, LIGHTNING], ids=lambda p: p.parent.name if p.suffix else p.name)
def test_analyze_table_shows_the_equilibrium_numbers_of_its_json(run, equilibrium_json):
    if run not in equilibrium_json:
        pytest.skip("sample run missing")
    layers = _layers(equilibrium_json[run])
    text = _normscope("analyze", run, "--equilibrium")
    table = text.split("Equilibrium of scale-invariant layers", 1)[1]
    shown = _rows(table, re.compile(r"block\d\.conv\.weight"))
    assert set(shown) == set(layers)
    for param, cells in shown.items():
        expected = [layer_cell(layers[param]) for layer_cell in
                    (lambda layer: layer["status"], *(_json_column(c) for c in quantities.EQUILIBRIUM_COLUMNS))]
        assert cells[1:1 + len(expected)] == expected, param


def _json_column(column: quantities.Column):
    """The column's formatter applied to the JSON layer (the JSON has the same keys as the dataclass)."""
    class _FromJson:
        def __init__(self, layer: dict):
            self.__dict__.update({k: (math.nan if v is None else v) for k, v in layer.items()})
    return lambda layer: column.value(_FromJson(layer))


@pytest.mark.parametrize("suffix", [".md", ".html"])
def test_reports_show_the_equilibrium_numbers_of_the_json(suffix, equilibrium_json, tmp_path):
    if SGD not in equilibrium_json:
        pytest.skip("sample run missing")
    out = tmp_path / f"report{suffix}"
    _normscope("report", SGD, "-o", out)
    text = out.read_text(encoding="utf-8")
    if suffix == ".html":
        text = re.sub(r"</t[dh]>\s*<t[dh][^>]*>", " | ", text)
        text = re.sub(r"<tr>\s*<t[dh][^>]*>", "\n| ", text)
        text = re.sub(r"</t[dh]>\s*</tr>", " |", text)
    text = re.sub(r"\\(.)", r"\1", text)  # Markdown's escapes, as rendered
    for param, layer in _layers(equilibrium_json[SGD]).items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {param} | sgd |"))
        cells = [cell.strip() for cell in row.split("|</", 1)[0].strip("| ").split(" | ")]
        expected = [_json_column(c)(layer) for c in quantities.EQUILIBRIUM_COLUMNS]
        assert cells[3:3 + len(expected)] == expected, (param, cells)


# --- not measured is not 0; a NaN tensor marks the total; no relative change from ~0 -----------------

def _json(*args: object) -> dict:
    return json.loads(_normscope(*args, "-f", "json"))


def test_angles_a_sparse_tracker_log_does_not_measure_are_not_shown_as_zero(tmp_path):
    import torch
    from torch import nn

    import normscope

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    log = tmp_path / "track.jsonl"
    with normscope.track(model, opt, log, every=10) as tracker:
        for step in range(60):
            tracker.set_epoch(step // 20)
            x = torch.randn(32, 8)
            loss = nn.functional.cross_entropy(model(x), (x[:, 0] > 0).long())
            opt.zero_grad()
            loss.backward()
            opt.step()
    document = _json("analyze", log)
    assert document["params"] and all(p["total_angle_rad"] is None for p in document["params"])
    text = _normscope("analyze", log)
    table = text.split("Per-parameter norm trajectories", 1)[1].split("angle moved –", 1)[0]
    rows = [line.split() for line in table.splitlines() if line.strip().startswith(("0.weight", "2.weight"))]
    assert rows and all(row[-1] == "–" for row in rows), text
    assert "angle moved –: not every interval" in text


def test_a_tensor_that_goes_nan_marks_the_total(tmp_path, tiny_trained_run):
    import shutil

    import torch

    run = tmp_path / "nan_run"
    shutil.copytree(tiny_trained_run, run)
    last = torch.load(run / "epoch_003.pt", weights_only=True)
    last["model"]["head.weight"][0, 0] = float("nan")
    torch.save(last, run / "epoch_003.pt")
    totals = _json("analyze", run)["totals"]
    assert totals["total_norm_last"] is None and totals["total_norm_nonfinite_snapshots"] == 1
    assert totals["total_norm_first"] is not None
    text = _normscope("analyze", run)
    assert "last – " in text and "not finite at 1 snapshot(s)" in text


def test_relative_change_from_a_near_zero_start_is_not_shown():
    if not LIVE.exists():
        pytest.skip("no sample")
    params = {p["param"]: p for p in _json("analyze", LIVE)["params"]}
    # BatchNorm biases start at 0 and are 0.006 after the first logged step: +41603 % said nothing
    assert params["block2.bn.bias"]["rel_change"] is None
    assert params["block1.conv.weight"]["rel_change"] == pytest.approx(4.981 / 2.307 - 1, rel=1e-3)
    watch = _rows(_normscope("watch", LIVE, "--once"), re.compile(r"[\w.]+\.(weight|bias)"))
    assert watch["block2.bn.bias"][3] == "–" and watch["block1.conv.weight"][3] == "+115.9%"
    assert "the norm starts near 0" in _normscope("analyze", LIVE)


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("run", [SGD, LIVE, LIGHTNING], ids=lambda p: p.parent.name if p.suffix else p.name)
def test_the_analyze_table_at_80_and_120_columns_shows_the_json_numbers_uncut(run, width):
    import io

    from normscope.analysis.runner import analyze_run
    from normscope.api import load_trajectory
    from normscope.report.analyze_json import analyze_document
    from normscope.report.analyze_view import analyze_view, fmt
    from normscope.report.safe_console import SafeConsole

    if not run.exists():
        pytest.skip("sample run missing")
    trajectory = load_trajectory(run)
    result = analyze_run(trajectory, equilibrium=False, recommendation=False)
    document = analyze_document(trajectory, result)
    buffer = io.StringIO()
    SafeConsole(file=buffer, width=width).print(analyze_view(trajectory, result))
    text = buffer.getvalue()
    table = text.split("Per-parameter norm trajectories", 1)[1].split("Weight-norm bounces", 1)[0]
    assert "…" not in table and max(len(line) for line in table.splitlines()) <= width
    header = next(line.split("  ") for line in table.splitlines() if "parameter" in line)
    columns = [c.strip() for c in header if c.strip()]
    rows = {line.split()[0]: line.split() for line in table.splitlines()
            if line.strip() and line.split()[0] in {p["param"] for p in document["params"]}}
    params = {p["param"]: p for p in document["params"] if p["kind"] != "buffer"}
    assert set(rows) == set(params)
    for name, param in params.items():
        expected = {"first": fmt(param["first_norm"]), "min": fmt(param["min_norm"]),
                    "last": fmt(param["last_norm"]),
                    "change": quantities.percent_change(param["rel_change"]),
                    "angle moved": quantities.angle(param["total_angle_rad"])}
        cells = rows[name]
        for column, value in expected.items():
            if column in columns:  # the narrowest pages drop low-value columns, never cut numbers
                assert value in cells, (name, column, value, cells)
        assert cells[-1] == expected["angle moved"] and cells[-2] == expected["change"], cells
