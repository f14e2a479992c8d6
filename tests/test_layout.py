"""Every command's terminal output reads at 80 columns: on the sample runs, piped (as a log or `less`
gets it) at COLUMNS=80 and 120, no line is longer than the page, none ends in spaces, no number is cut
(rich's `…`), and every number of the JSON's key fields that the tables always show is there whole.
Notes and warnings go to stderr with one label, and `-f json` on stdout stays pure JSON.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from normscope.cli import app
from normscope.report import quantities

SAMPLES = Path(__file__).resolve().parent.parent / "sample_runs"
RUNS = {
    "sgd": SAMPLES / "digits_bn_cnn_sgd",
    "adamw": SAMPLES / "digits_ln_transformer_adamw",
    "lightning": SAMPLES / "digits_bn_cnn_lightning",
    "live": SAMPLES / "digits_bn_cnn_live" / "track.jsonl",
}
WIDTHS = (80, 120)
LABEL = re.compile(r"normscope: (warning|note): \S")


def _invoke(*args: object, columns: int = 200) -> tuple[int, str, str]:
    env = {"COLUMNS": str(columns), "GITHUB_ACTIONS": None, "GITLAB_CI": None, "NO_COLOR": "1"}
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    assert result.exit_code in (0, 1), (args, result.output, result.exception)
    return result.exit_code, result.stdout, result.stderr


def _run(name: str) -> Path:
    run = RUNS[name]
    return run if run.exists() else pytest.skip(f"sample run {name} missing")


def _tokens(text: str) -> set[str]:
    """Every word of the text, without the brackets and punctuation around it."""
    words = set()
    for word in text.split():
        words.add(word)
        words.update(part.strip("()[],;:x×") for part in re.split(r"[–=]", word))
    return words


def _assert_laid_out(text: str, width: int, what: str) -> None:
    assert text.strip(), what
    for line in text.splitlines():
        assert len(line) <= width, f"{what}: {len(line)} > {width} columns: {line!r}"
        assert line == line.rstrip(), f"{what}: trailing spaces: {line!r}"
        assert "…" not in line, f"{what}: a cut cell: {line!r}"


def _assert_shown(expected: list[str], text: str, what: str) -> None:
    tokens = _tokens(text)
    missing = [value for value in expected if value != quantities.NOT_MEASURED and value not in tokens]
    assert not missing, f"{what}: {missing} not shown whole in\n{text}"


@pytest.fixture(scope="module")
def analyze_json() -> dict[str, dict]:
    """`analyze --equilibrium --granularity row -f json` of each sample run, once."""
    out = {}
    for name, run in RUNS.items():
        if run.exists():
            out[name] = json.loads(_invoke("analyze", run, "--equilibrium", "--granularity", "row", "-f", "json")[1])
    return out


def _latest_rows(document: dict) -> dict[str, dict]:
    """Each tensor's last settled interval, else its last (what the per-neuron table shows)."""
    latest: dict[str, dict] = {}
    for interval in document.get("rows", {}).get("intervals", []):
        name = interval["param"]
        if interval["settled"] or name not in latest or not latest[name]["settled"]:
            latest[name] = interval
    return latest


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", list(RUNS))
def test_analyze_with_every_section_fits_the_page(name, width, analyze_json):
    run = _run(name)
    _, text, _ = _invoke("analyze", run, "--equilibrium", "--granularity", "row", columns=width)
    _assert_laid_out(text, width, f"analyze {name}")
    document = analyze_json[name]
    params = [p for p in document["params"] if p["kind"] != "buffer"]
    _assert_shown([quantities.percent_change(p["rel_change"]) for p in params]
                  + [quantities.angle(p["total_angle_rad"]) for p in params]
                  + [f"{p['last_norm']:.4g}" for p in params if p["last_norm"] is not None], text, "params")
    layers = document.get("equilibrium", {}).get("layers", [])
    _assert_shown([quantities.ratio(layer["ratio"]) for layer in layers]
                  + [quantities.ratio(layer["settled_ratio"]) for layer in layers]
                  + [quantities.angle(layer["predicted_angle_per_step_rad"]) for layer in layers],
                  text, "equilibrium")
    rows = _latest_rows(document).values()
    _assert_shown([f"{r['tensor_angle_ratio']:.3g}" for r in rows if r["tensor_angle_ratio"] is not None],
                  text, "per-neuron")


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", list(RUNS))
def test_recommend_fits_the_page(name, width):
    run = _run(name)
    _, text, _ = _invoke("recommend", run, "--texp", columns=width)
    _assert_laid_out(text, width, f"recommend {name}")
    document = json.loads(_invoke("recommend", run, "-f", "json")[1])
    schedule = document["schedule"]
    _assert_shown([str(e) for e in document["decay_epochs"] + document["exact_decay_epochs"]]
                  + [f"{schedule[-1]['lr']:.4g}", f"{schedule[-1]['lr_exact_abel']:.4g}"], text, "decays")
    for layer in document["layers"]:
        _assert_shown([str(e) for e in layer["exact_decay_epochs"]], text, f"layer {layer['layer']}")


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", list(RUNS))
def test_check_fits_the_page(name, width):
    run = _run(name)
    _, text, _ = _invoke("check", run, "--max-growth", "1.1", "--min-growth", "0.95", columns=width)
    _assert_laid_out(text, width, f"check {name}")
    document = json.loads(_invoke("check", run, "--max-growth", "1.1", "--min-growth", "0.95", "-f", "json")[1])
    failed = [f for f in document["findings"] if not f["passed"]]
    assert failed, "the limits are chosen so that some layer fails"
    _assert_shown([f"{f['value']:.4g}" for f in failed if f["value"] is not None], text, "failures")


@pytest.mark.parametrize("width", (80, 120, 140))
@pytest.mark.parametrize("name", list(RUNS))
def test_watch_once_fits_the_page_and_wraps_its_advice(name, width, analyze_json):
    run = _run(name)
    _, text, _ = _invoke("watch", run, "--once", columns=width)
    _assert_laid_out(text, width, f"watch {name}")
    flat = " ".join(text.split())
    assert "refreshed" in flat
    layers = analyze_json[name].get("equilibrium", {}).get("layers", [])
    _assert_shown([quantities.ratio(layer["ratio"]) for layer in layers], text, "watch")
    wide = _invoke("watch", run, "--once", columns=1000)[1].splitlines()
    advice = wide[next(i for i, line in enumerate(wide) if line.startswith("total weight norm")) + 1:]
    assert advice
    for line in advice:  # each advice line whole, wrapped at its spaces
        assert " ".join(line.split()) in flat, line


@pytest.mark.parametrize("width", WIDTHS)
def test_report_says_what_it_wrote_in_lines_that_fit(width, tmp_path):
    run = _run("adamw")
    _, text, err = _invoke("report", run, "-o", tmp_path / "r.md", columns=width)
    # stdout is machine output, the files written, one per line, however long their names
    assert text.splitlines() and all(Path(line).exists() for line in text.splitlines()), text
    assert all(line == line.rstrip() for line in text.splitlines())
    assert err and all(LABEL.match(line) for line in err.splitlines()), err


@pytest.mark.parametrize("name", list(RUNS))
@pytest.mark.parametrize("command", [("analyze", "--equilibrium"), ("recommend",), ("check",)],
                         ids=lambda c: c[0])
def test_json_on_stdout_stays_pure_and_notes_go_to_stderr_with_one_label(name, command):
    run = _run(name)
    _, out, err = _invoke(*command, run, "-f", "json")
    json.loads(out)  # nothing but the document
    for line in err.splitlines():
        assert LABEL.match(line), f"{command[0]} {name}: {line!r}"
    _, table, table_err = _invoke(*command, run)
    assert table_err == err, "the table format says the same on stderr"
    assert not re.search(r"^\s*(normscope: )?(warning|note): ", table, re.MULTILINE), table


def test_each_kind_of_note_reaches_stderr():
    """A run's warning (the HF run's safetensors lose the parameter order), a recommendation's note and
    check's note that no limit is set: all on stderr, none on stdout."""
    adamw = _run("adamw")
    for args in (("analyze", adamw), ("recommend", adamw), ("check", adamw), ("watch", adamw, "--once")):
        _, out, err = _invoke(*args)
        assert "normscope: warning: the weights file does not keep parameter order" in err, args
        assert "parameter order" not in out, args
    _, out, err = _invoke("recommend", adamw, "-f", "json")
    notes = json.loads(out)["notes"]  # its cosine schedule: decays not judged one by one
    assert notes and all(f"normscope: note: {note}" in err.splitlines() for note in notes)
    table = " ".join(_invoke("recommend", adamw)[1].split())
    assert not any(" ".join(note.split()) in table for note in notes)
    _, out, err = _invoke("check", _run("sgd"))
    assert "normscope: note: no limits are set" in err and "no limits" not in out
