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
ADAMW = SAMPLES / "digits_ln_transformer_adamw"
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
@pytest.mark.parametrize("run", [SGD, LIVE, LIGHTNING, ADAMW], ids=lambda p: p.parent.name if p.suffix else p.name)
def test_the_analyze_table_at_80_and_120_columns_shows_the_json_numbers_uncut(run, width):
    import io

    from normscope.analysis.runner import analyze_run
    from normscope.api import load_trajectory
    from normscope.report.analyze_json import analyze_document
    from normscope.report.terminal.analyze_view import analyze_view, fmt
    from normscope.report.terminal.safe_console import SafeConsole

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
    params = {p["param"]: p for p in document["params"] if p["kind"] != "buffer"}
    body = table.split("\n")
    start = next(i for i, line in enumerate(body) if "parameter" in line) + 2  # past the header's rule
    rows: dict[str, list[str]] = {}
    for line in body[start:]:
        cells = line.split()
        if not cells or line.startswith("left out at this width") or re.match(r"[\w ]+ –: ", line):
            break  # the table ends at a blank line or at its notes (what it left out, what – means)
        if len(cells) == 1 and rows:  # a long name wraps: its rest is alone on the next line
            name, row = rows.popitem()
            rows[name + cells[0]] = [name + cells[0], *row[1:]]
        else:
            rows[cells[0]] = cells
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


# --- every sample run × every view: each number a view shows is a number of the run's JSON ---------
#
# One analysis per run (`analyze_run`, as every command runs it) renders every view: `analyze` at 80
# and 120 columns (with and without --equilibrium), `watch --once`, the HTML and Markdown report and
# `recommend`. Each number token a view shows must be a value of the run's JSON (`analyze -f json
# --equilibrium` plus `recommend -f json`), as the view rounds it (percent: ×100, degrees: from
# radians); the tables' cells are also checked one by one against their JSON field.

EVERY_RUN = {"digits_bn_cnn_sgd": SGD, "digits_bn_cnn_live": LIVE, "digits_bn_cnn_lightning": LIGHTNING,
             "digits_ln_transformer_adamw": ADAMW}
_NUMBER = re.compile(r"(?<![A-Za-z0-9_.])([-+−]?)(\d[\d,]*(?:\.\d+)?(?:e[-+]\d+)?)(%|°)?(?![A-Za-z0-9_])")


def test_the_cross_view_tests_cover_every_sample_run():
    runs = {p.name for p in SAMPLES.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    assert runs == set(EVERY_RUN), "a sample run is missing from EVERY_RUN (or one was removed)"


def _text(renderable, width: int) -> str:
    import io

    from normscope.report.terminal.safe_console import SafeConsole

    buffer = io.StringIO()
    SafeConsole(file=buffer, width=width, color_system=None).print(renderable)
    return buffer.getvalue()


@pytest.fixture(scope="module", params=sorted(EVERY_RUN), ids=str)
def every_view(request, tmp_path_factory) -> dict:
    """The JSON and every view of one sample run, from one analysis."""
    from dataclasses import replace

    from normscope.analysis.runner import RunOptions, analyze_run
    from normscope.api import load_with_options
    from normscope.report.analyze_json import analyze_document
    from normscope.live.render import render_frame
    from normscope.report.documents.assemble import run_report
    from normscope.report.documents.html import render_html
    from normscope.report.documents.markdown import render_markdown
    from normscope.report.machine.recommend_json import to_json
    from normscope.report.terminal.analyze_view import analyze_view
    from normscope.report.terminal.recommend_view import recommend_view

    run = EVERY_RUN[request.param]
    if not run.exists():
        pytest.skip("sample run missing")
    options = RunOptions()
    trajectory = load_with_options(run, options)
    analysis = analyze_run(trajectory, options)
    assert analysis.recommendation is not None and analysis.live is not None, analysis.skipped
    plain = replace(analysis, equilibrium=None)  # `analyze` without --equilibrium
    report = run_report(trajectory, analysis=analysis)
    views = {f"analyze@{w}": _text(analyze_view(trajectory, plain, notes=False), w) for w in (80, 120)}
    views |= {f"analyze --equilibrium@{w}": _text(analyze_view(trajectory, analysis, notes=False), w)
              for w in (80, 120)}
    views["watch --once"] = _text(render_frame(analysis.live), 160)
    views["recommend"] = _text(recommend_view(analysis.recommendation, analysis.texp, analysis.premise), 160)
    views["report.html"] = render_html(report)
    views["report.md"] = render_markdown(report, image_stem="report")
    documents = {"analyze": json.loads(json.dumps(analyze_document(trajectory, analysis))),
                 "recommend": json.loads(json.dumps(to_json(analysis.recommendation, analysis.texp,
                                                            analysis.premise)))}
    names = {Path(s["path"]).name for s in documents["analyze"]["snapshots"]} | {str(run), run.name}
    return {"run": run, "views": views, "json": documents, "names": sorted(names, key=len, reverse=True),
            "trajectory": trajectory, "analysis": analysis}


def _leaves(value):
    """Every number in a JSON document, those inside its strings included (advice, evidence)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield float(value)
    elif isinstance(value, str):
        for match in _NUMBER.finditer(value):
            yield _token_value(match)


def _token_value(match: re.Match[str]) -> float:
    sign = -1.0 if match.group(1) in ("-", "−") else 1.0
    return sign * float(match.group(2).replace(",", ""))


def _half_unit(digits: str) -> float:
    """Half a unit in the last digit shown: the widest gap between a value and its rounding."""
    mantissa, _, exponent = digits.replace(",", "").partition("e")
    unit = 10.0 ** -len(mantissa.partition(".")[2]) * (10.0 ** int(exponent) if exponent else 1.0)
    return unit / 2 * (1 + 1e-9)


def _plain_text(view: str, text: str, names: list[str]) -> str:
    """The text a reader sees: tags, styles and embedded images of HTML, image links and escapes of
    Markdown, and the run's own names (files, root) left out."""
    import html

    if view.endswith(".html"):
        text = re.sub(r"<style.*?</style>", " ", text, flags=re.S)
        text = html.unescape(re.sub(r"<[^>]+>", " ", re.sub(r"<img[^>]*>", " ", text)))
    if view.endswith(".md"):
        text = re.sub(r"\\(.)", r"\1", re.sub(r"!\[[^\]]*\]\([^)]*\)", " ", text))
    for name in names:
        text = text.replace(name, " ")
    return text


def _numbers_not_in_the_json(text: str, documents: dict) -> list[str]:
    import numpy as np

    values = np.array(sorted({v for doc in documents.values() for v in _leaves(doc) if math.isfinite(v)}))
    values = np.concatenate([values, -values])
    scaled = {"": np.sort(values), "%": np.sort(values * 100), "°": np.sort(np.degrees(values))}
    missing = []
    for match in _NUMBER.finditer(text):
        value, half = _token_value(match), _half_unit(match.group(2))
        candidates = scaled[match.group(3) or ""]
        at = np.searchsorted(candidates, value - half)
        if not (at < len(candidates) and candidates[at] <= value + half):
            missing.append(f"{match.group(0)!r} in …{text[max(0, match.start() - 60):match.end() + 20]!r}")
    return missing


# The equilibrium table at 80 columns wraps its numeric cells over two lines (`0.030` / `2°`); its
# column widths are the layout's to fix. The cell test below is strict about it; the pieces of a cut
# number can each happen to be some other value of the JSON, so this test only expects it to fail.
VIEWS = ("analyze@80", "analyze@120", "analyze --equilibrium@80", "analyze --equilibrium@120", "watch --once",
         "recommend", "report.html", "report.md")


def _run_name(run: Path) -> str:
    return run.parent.name if run.suffix else run.name


@pytest.mark.parametrize("view", VIEWS)
def test_every_number_a_view_shows_is_in_the_json_of_its_run(every_view, view):
    text = _plain_text(view, every_view["views"][view], every_view["names"])
    assert _NUMBER.search(text), "the view shows no number at all"
    missing = _numbers_not_in_the_json(text, every_view["json"])
    assert not missing, f"{view} of {_run_name(every_view['run'])} shows numbers its JSON lacks:\n" + "\n".join(missing)


def _cells(line: str) -> list[str]:
    """The cells of one line of a table, split on its column gaps (two spaces or more)."""
    return [cell.strip() for cell in re.split(r"\s{2,}", line.strip())]


def _left_out(text: str) -> set[str]:
    """The columns a table names as left out at this width (its note may wrap)."""
    note = re.search(r"left out at this width: (.*?) \(a wider\s+page shows them\)|"
                     r"left out at this width: (.*?) \(a wider page shows them\)", text, flags=re.S)
    if note is None:
        return set()
    names = " ".join((note.group(1) or note.group(2)).split())
    return {name.strip() for name in names.split(",")}


@pytest.mark.parametrize("width", [80, 120])
def test_the_equilibrium_table_at_80_and_120_columns_shows_the_json_numbers_uncut(every_view, width):
    layers = _layers(every_view["json"]["analyze"])
    if not layers:
        pytest.skip("no scale-invariant layer in this run")
    text = every_view["views"][f"analyze --equilibrium@{width}"]
    table = text.split("Equilibrium of scale-invariant layers", 1)[1]
    left_out = _left_out(table.split("\n\n", 1)[0])
    shown = [c for c in quantities.EQUILIBRIUM_COLUMNS if c.header not in left_out]
    assert len(shown) == len(quantities.EQUILIBRIUM_COLUMNS) - len(left_out), left_out
    rows = {cells[0]: cells for cells in map(_cells, table.splitlines()) if cells[0] in layers}
    assert set(rows) == set(layers)
    for param, cells in rows.items():
        status = cells[1]  # a word, which a narrow page may cut (`approachi…`); the numbers never
        assert status == layers[param]["status"] or (status.endswith("…") and
                                                     layers[param]["status"].startswith(status[:-1])), cells
        expected = [_json_column(c)(layers[param]) for c in shown]
        assert cells[2:2 + len(expected)] == expected, (param, cells)


def test_watch_cells_are_the_live_numbers_of_the_json(every_view):
    live = {layer["param"]: layer for layer in every_view["json"]["analyze"]["live"]["layers"]}
    shown = _rows(every_view["views"]["watch --once"], re.compile(r"[\w.]+"))
    shown.pop("param", None)
    assert set(shown) == set(live)

    def number(x, spec=".4g"):
        return "–" if x is None else format(x, spec)

    for param, cells in shown.items():
        layer = live[param]
        assert cells[2] == number(layer["norm"]), cells
        assert cells[3] == ("–" if layer["norm_change"] is None else f"{layer['norm_change']:+.1%}"), cells
        assert cells[4] == number(layer["grad_norm"]), cells
        assert cells[5] == number(layer["cos_wg"], "+.3f"), cells
        assert cells[6] == quantities.angle(layer["angle_rad"]), cells
        assert cells[7] == quantities.angle(layer["equilibrium_angle_rad"]), cells
        assert cells[8] == quantities.ratio(layer["angle_ratio"]), cells
    live_doc = every_view["json"]["analyze"]["live"]
    assert f"total weight norm {live_doc['total_weight_norm']:.4g} " in every_view["views"]["watch --once"]
    params = {p["param"]: p for p in every_view["json"]["analyze"]["params"]}
    for param, layer in live.items():  # the latest record is the one analyze's `last` is
        assert layer["norm"] == pytest.approx(params[param]["last_norm"], rel=1e-12), param


def test_recommend_cells_are_the_numbers_of_its_json(every_view):
    doc = every_view["json"]["recommend"]
    text = every_view["views"]["recommend"]
    rows = [_cells(line) for line in text.splitlines() if line.startswith(("recommended (", "exact ABEL rule ("))]
    recommended, exact = rows
    shown_epochs = [int(e) for e in re.findall(r"(?:^|, )(\d+) \(", recommended[1])]
    assert shown_epochs == doc["decay_epochs"], recommended
    assert recommended[2] == f"{doc['schedule'][-1]['lr']:.4g}", recommended
    assert exact[1] == (", ".join(map(str, doc["exact_decay_epochs"])) or "none"), exact
    assert exact[2] == f"{doc['schedule'][-1]['lr_exact_abel']:.4g}", exact
    assert f"base lr={doc['base_lr']:g} " in text
    robust = doc["robust"]
    assert f"noise σ = {robust['noise']:.2e} in log N per epoch; threshold h = {robust['threshold']:.2e}" in text
    bounce_rows = {cells[0]: cells for cells in map(_cells, text.splitlines()) if cells[0].isdigit()}
    for bounce in robust["bounces"]:
        cells = bounce_rows[str(bounce["start_epoch"])]
        assert cells[1:4] == [str(bounce["minimum_epoch"]), str(bounce["confirmed_epoch"]),
                              "rising" if bounce["rise_end_epoch"] is None else str(bounce["rise_end_epoch"])], cells
        assert cells[6:] == [f"{bounce['depth']:.1%}", f"{bounce['rise']:.1%}", f"{bounce['significance']:.1f}",
                             f"{bounce['confidence']:.3f}"], cells


def test_reports_show_the_numbers_of_the_json_of_every_run(every_view):
    layers = {layer["param"]: layer for layer in (every_view["json"]["analyze"].get("equilibrium") or {})
              .get("layers", [])}
    rec = every_view["json"]["recommend"]
    for view in ("report.html", "report.md"):
        text = every_view["views"][view]
        if view.endswith(".html"):
            text = re.sub(r"</t[dh]>\s*<t[dh][^>]*>", " | ", text)
            text = re.sub(r"<tr>\s*<t[dh][^>]*>", "\n| ", text)
            text = re.sub(r"</t[dh]>\s*</tr>", " |", text)
        text = re.sub(r"\\(.)", r"\1", text)
        rows = [[cell.strip() for cell in line.split("|</", 1)[0].strip().strip("|").split(" | ")]
                for line in text.splitlines() if line.startswith("| ")]
        for param, layer in layers.items():  # the equilibrium table: param, optimizer, status, columns
            cells = next(row for row in rows if row[0] == param and row[2] == layer["status"])
            expected = [_json_column(c)(layer) for c in quantities.EQUILIBRIUM_COLUMNS]
            assert cells[3:3 + len(expected)] == expected, (view, param, cells)
        for param in every_view["json"]["analyze"]["params"]:  # the per-parameter table (no buffers)
            if param["kind"] == "buffer":
                continue
            cells = next(row for row in rows if row[0] == param["param"] and row[1] == param["kind"])
            number = [quantities.NOT_MEASURED if param[key] is None else f"{param[key]:.4g}"
                      for key in ("first_norm", "min_norm", "last_norm")]
            assert [cells[3], cells[4], cells[6]] == number, (view, cells)
            assert cells[7:9] == [quantities.percent_change(param["rel_change"]),
                                  quantities.angle(param["total_angle_rad"])], (view, cells)
        epochs = ", ".join(map(str, rec["decay_epochs"])) or "none"
        exact = ", ".join(map(str, rec["exact_decay_epochs"])) or "none"
        assert (f"recommended decay epochs (robust bounces + final decay): {epochs}; the literal ABEL rule "
                f"would decay at {exact}") in re.sub(r"\s+", " ", text), view


def test_the_in_process_document_is_the_one_the_cli_prints(every_view, equilibrium_json):
    run = every_view["run"]
    if run not in equilibrium_json:
        pytest.skip("no CLI document for this run in this module")
    assert every_view["json"]["analyze"] == equilibrium_json[run]


def test_table_view_is_the_same_without_the_live_frame():
    # `analyze`'s table view asks for no live frame (only the json document has it)
    import io

    from normscope.analysis.runner import analyze_run
    from normscope.api import load_trajectory
    from normscope.report.terminal.analyze_view import analyze_view
    from normscope.report.terminal.safe_console import SafeConsole

    trajectory = load_trajectory(SGD)
    views = []
    for live in (True, False):
        result = analyze_run(trajectory, equilibrium=False, recommendation=False, live=live)
        assert (result.live is not None) is live
        buffer = io.StringIO()
        SafeConsole(file=buffer, width=160).print(analyze_view(trajectory, result, notes=False))
        views.append(buffer.getvalue())
    assert views[0] == views[1] and "Per-parameter norm trajectories" in views[0]


@pytest.mark.parametrize("run", [SGD, ADAMW], ids=lambda p: p.parent.name if p.suffix else p.name)
def test_the_bounces_and_the_advice_are_of_one_series_aggregated_once(run, monkeypatch):
    """`analyze_run` aggregates the table to its end-of-epoch series once: the bounces and the
    recommendation are of that same series, and the recommendation is what `recommend_table`
    makes of the table on its own."""
    from normscope.analysis import epochs, runner
    from normscope.analysis.recommend import recommend_table
    from normscope.api import load_trajectory

    if not run.exists():
        pytest.skip("sample run missing")
    trajectory = load_trajectory(run)
    calls = []
    aggregate = epochs.epoch_series

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return aggregate(*args, **kwargs)

    monkeypatch.setattr(runner, "epoch_series", counted)
    result = runner.analyze_run(trajectory, live=False)
    assert len(calls) == 1
    assert result.bounces is not None and result.recommendation is not None
    assert result.recommendation.series is result.bounces.series
    # by repr: a field that is NaN (an SGD run's beta1) is unequal to itself
    assert repr(result.recommendation) == repr(recommend_table(trajectory.table))


def test_a_run_too_short_for_a_series_gives_the_bounces_and_the_advice_one_reason():
    """No end-of-epoch series (two epochs): neither analysis runs, and both say why in the words
    `recommend_table` says it."""
    from dataclasses import replace

    from normscope.analysis.recommend import recommend_table
    from normscope.analysis.runner import analyze_run
    from normscope.api import load_trajectory
    from normscope.errors import NormscopeError

    if not SGD.exists():
        pytest.skip("sample run missing")
    trajectory = load_trajectory(SGD)
    short = replace(trajectory, table=trajectory.table[trajectory.table["snapshot"] < 2])
    result = analyze_run(short, live=False)
    with pytest.raises(NormscopeError) as raised:
        recommend_table(short.table)
    assert result.bounces is None and result.recommendation is None
    assert result.skipped["bounces"] == result.skipped["recommendation"] == raised.value.message
    assert "needs at least 3" in raised.value.message
