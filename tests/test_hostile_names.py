"""Names from a run are untrusted text: no output of any command may turn them into a CI workflow
command, a terminal escape sequence or rich markup.

A real tiny run is trained, then copied into a directory whose name, one checkpoint's file name and
one tensor's name carry a newline + `::error title=…::`, the legacy `##[error]` marker, ESC sequences
(an OSC window title, clear-screen), C1 and bidi controls, rich markup, Markdown/HTML and mathtext.
Every command and output format is run on it as a user would (subprocesses, and a pseudo-terminal for
the colour views), and each output is checked line by line.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from normscope.report import escape

INJECTION = ("\n::error title=x::pwn\r\n  ::warning::indented ##[error]legacy \x1b]0;OWNED\x07\x1b[2J\x9b31m"
             "[/bold][bold]| <script>alert(1)</script> `tick` *em* $x^$ \u202eevil\u2028next")
HOSTILE_TENSOR = "block1.conv.weight" + INJECTION
HOSTILE_DIR = "run" + INJECTION.replace("/", "_")
HOSTILE_FILE = "epoch_003" + INJECTION.replace("/", "_") + ".pt"

# Characters that must never reach any output raw: C0 controls but the format's own line breaks and
# tabs, DEL, C1 controls (U+009B is CSI), line/paragraph separators, bidi overrides and isolates.
_RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_ANNOTATION = re.compile(r"^::(error|warning) ([^:]*)::(.*)$")


def _own_annotation(line: str) -> bool:
    """A workflow command normscope wrote itself: `::error file=…,title=normscope RULE: …::message`
    with every property escaped (no raw `:` or `,` inside a value)."""
    match = _ANNOTATION.match(line)
    if match is None:
        return False
    props = dict(item.split("=", 1) for item in match.group(2).split(","))
    return set(props) <= {"file", "line", "title"} and props["title"].startswith("normscope ")


def assert_inert(text: str, *, annotations: int = 0, where: str = "") -> None:
    """No raw control character, no `##[`, and no line that the runner reads as a workflow command
    except exactly `annotations` of normscope's own."""
    bad = _RAW_CONTROL.findall(text)
    assert not bad, f"{where}: raw control characters {bad!r}"
    assert "##[" not in text, f"{where}: legacy workflow command marker"
    lines = text.splitlines()
    commands = [line for line in lines if line.lstrip().startswith("::")]
    own = [line for line in commands if _own_annotation(line)]
    assert len(own) == len(commands), f"{where}: foreign workflow command {set(commands) - set(own)}"
    assert len(own) == annotations, f"{where}: {len(own)} annotations, expected {annotations}"


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> Path:
    """A copy of a freshly trained tiny run with hostile directory, file and tensor names."""
    pytest.importorskip("sklearn", reason="the tiny run needs scikit-learn")
    from sample_runs.digits import load_digits_split
    from sample_runs.sgd_run import SGDRunConfig, train_sgd_run

    base = tmp_path_factory.mktemp("hostile")
    trained = train_sgd_run(base / "trained", SGDRunConfig(epochs=3, decay_epochs=(2,)), load_digits_split())
    del trained
    run = base / HOSTILE_DIR
    run.mkdir()
    for index in range(4):
        checkpoint = torch.load(base / "trained" / f"epoch_{index:03d}.pt", weights_only=True)
        checkpoint["model"] = {HOSTILE_TENSOR if key == "block1.conv.weight" else key: value
                               for key, value in checkpoint["model"].items()}
        name = HOSTILE_FILE if index == 3 else f"epoch_{index:03d}.pt"
        torch.save(checkpoint, run / name)
    return run


@pytest.fixture(scope="module")
def hostile_log(tmp_path_factory) -> Path:
    """A live tracker log of a real small training loop whose parameter name is hostile."""
    import normscope

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8, bias=False), nn.LayerNorm(8), nn.Linear(8, 2))
    # a parameter name with no dot (torch refuses dots) but everything else
    model.register_parameter(INJECTION.replace(".", "_"), nn.Parameter(torch.randn(4)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    path = tmp_path_factory.mktemp("hostile_log") / ("track" + INJECTION.replace("/", "_") + ".jsonl")
    generator = torch.Generator().manual_seed(0)
    with normscope.track(model, opt, path) as tracker:
        for step in range(12):
            tracker.set_epoch(step // 4)
            x = torch.randn(16, 8, generator=generator)
            loss = model(x).square().mean() + getattr(model, INJECTION.replace(".", "_")).square().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return path


def _strings(document):
    """Every string in a JSON document, keys included."""
    if isinstance(document, str):
        yield document
    elif isinstance(document, dict):
        for key, value in document.items():
            yield key
            yield from _strings(value)
    elif isinstance(document, list):
        for value in document:
            yield from _strings(value)


def _normscope(*args: object, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run([sys.executable, "-m", "normscope", *map(str, args)], check=False, capture_output=True,
                          text=True, encoding="utf-8", errors="strict", env={**os.environ, **(env or {})},
                          cwd=cwd, timeout=300)


def _ran(result, where: str, codes=(0,)) -> None:
    assert result.returncode in codes, f"{where}: exit {result.returncode}: {result.stderr}"
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, where


def test_escape_functions_leave_nothing_a_runner_or_terminal_acts_on():
    shown = escape.printable(HOSTILE_TENSOR)
    assert "\n" not in shown and "\x1b" not in shown and "::" not in shown and "##[" not in shown
    assert shown.startswith("block1.conv.weight\\n\\x3a:error title=x\\x3a:pwn\\r\\n")
    assert "\\x1b]0;OWNED\\x07" in shown and "\\x9b" in shown and "\\u202e" in shown
    assert escape.printable(shown) == shown  # escaping twice changes nothing
    assert escape.printable(":::") == "\\x3a\\x3a:"
    # the runner's own rules for workflow commands
    assert escape.github_data("100% done\r\nnext") == "100%25 done%0D%0Anext"
    assert escape.github_property("a:b,c%d\ne") == "a%3Ab%2Cc%25d%0Ae"
    assert escape.github_data("\x1b[2J") == "\\x1b[2J"
    assert escape.csv_field("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert escape.html_text("<script>&") == "&lt;script&gt;&amp;"
    assert escape.markdown_text("a|b`c<d>") == "a\\|b\\`c\\<d\\>"
    assert escape.markdown_code("x`y|z") == "``x`y\\|z``"
    assert escape.plot_label("$x^$") == "\\$x^\\$"
    document = {"name": HOSTILE_TENSOR}
    assert json.loads(escape.json_text(document)) == document  # JSON keeps the name as data
    assert_inert(escape.json_text(document))


TERMINAL_AND_DATA_VIEWS = [
    ("analyze",), ("analyze", "-f", "json"), ("analyze", "-f", "csv"), ("analyze", "--equilibrium"),
    ("analyze", "--equilibrium", "-f", "json"), ("recommend",), ("recommend", "-f", "json"),
    ("recommend", "-f", "csv"), ("check", "--all"), ("check", "-f", "json", "--all"),
    ("check", "--max-growth", "1.01"), ("watch", "--once"),
]


@pytest.mark.parametrize("args", TERMINAL_AND_DATA_VIEWS, ids=" ".join)
def test_every_view_of_a_hostile_run_is_inert(hostile_run, args):
    result = _normscope(*args[:1], hostile_run, *args[1:])
    _ran(result, " ".join(args), codes=(0, 1))
    assert_inert(result.stdout, where=f"{args} stdout")
    assert_inert(result.stderr, where=f"{args} stderr")
    if args[0] != "recommend":  # recommend names layers, not tensors
        assert "block1.conv.weight" in result.stdout
    if "json" in args and args[0] != "recommend":
        strings = set(_strings(json.loads(result.stdout)))
        assert any(HOSTILE_TENSOR in text for text in strings), "JSON keeps the real name"
    elif args[0] == "analyze" and "csv" in args:
        rows = list(csv.DictReader(io.StringIO(result.stdout)))
        assert escape.csv_field(HOSTILE_TENSOR) in {row["param"] for row in rows}
        assert all(not row["path"].count("\n") for row in rows)
    elif "csv" not in args and args[0] != "recommend":
        assert escape.printable(HOSTILE_TENSOR)[:60] in result.stdout.replace("\n", "") or \
            "block1.conv.weight\\n\\x3a:error" in result.stdout


def test_check_in_github_actions_writes_only_its_own_annotations(hostile_run, tmp_path):
    summary = tmp_path / "summary.md"
    junit = tmp_path / "junit.xml"
    result = _normscope("check", hostile_run, "--max-growth", "1.01", "--junit", junit,
                        env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary),
                             "GITHUB_WORKSPACE": str(tmp_path)})
    _ran(result, "check in Actions", codes=(1,))
    failed = json.loads(_normscope("check", hostile_run, "--max-growth", "1.01", "-f", "json").stdout)
    errors = [f for f in failed["findings"] if f["status"] == "error"]
    assert len(errors) >= 4  # the four weight tensors grew
    assert_inert(result.stdout, where="check stdout")
    assert_inert(result.stderr, annotations=len(errors), where="check stderr")
    hostile = next(line for line in result.stderr.splitlines() if "block1.conv.weight" in line)
    # the annotation's title keeps the name, escaped by the runner's rules (it reads %0A back as a newline)
    assert "title=normscope growth%3A block1.conv.weight%0A%3A%3Aerror title=x%3A%3Apwn%0D%0A" in hostile
    assert "\\x1b]0;OWNED\\x07" in hostile
    markdown = summary.read_text(encoding="utf-8")
    assert_inert(markdown, where="job summary")
    assert "<script>" not in re.sub(r"(`+).+?\1", "", markdown)  # a code span shows HTML as text
    _assert_markdown_tables_keep_their_columns(markdown)
    xml = junit.read_text(encoding="utf-8")
    assert_inert(xml, where="junit")
    import xml.etree.ElementTree as ET

    names = [case.get("name") for case in ET.fromstring(xml).iter("testcase")]
    assert escape.printable(HOSTILE_TENSOR) in names


def _assert_markdown_tables_keep_their_columns(markdown: str) -> None:
    """Every row of every Markdown table has as many unescaped `|` as its header."""
    pipes = re.compile(r"(?<!\\)\|")
    header = None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        count = len(pipes.findall(line))
        if header is None:
            header = count
        assert count == header, f"a name split a Markdown table row: {line!r}"


@pytest.mark.parametrize("suffix", [".md", ".html"])
def test_reports_of_a_hostile_run_are_inert(hostile_run, tmp_path, suffix):
    out = tmp_path / f"report{suffix}"
    result = _normscope("report", hostile_run, "-o", out)
    _ran(result, f"report {suffix}")
    assert_inert(result.stdout + result.stderr, where="report command")
    text = out.read_text(encoding="utf-8")
    assert_inert(text, where=f"report{suffix}")
    assert "<script>" not in text
    if suffix == ".md":
        _assert_markdown_tables_keep_their_columns(text)
        assert escape.markdown_text(HOSTILE_TENSOR) in text
    else:
        assert escape.html_text(HOSTILE_TENSOR) in text


def test_table_and_parquet_files_of_a_hostile_run(hostile_run, tmp_path):
    table = tmp_path / "table.txt"
    _ran(_normscope("analyze", hostile_run, "-o", table), "analyze -o")
    assert_inert(table.read_text(encoding="utf-8"), where="analyze -o table")
    pytest.importorskip("pyarrow")
    import pandas as pd

    parquet = tmp_path / "table.parquet"
    _ran(_normscope("analyze", hostile_run, "-f", "parquet", "-o", parquet), "analyze parquet")
    assert HOSTILE_TENSOR in set(pd.read_parquet(parquet)["param"])  # a binary data file keeps the name


def test_recommend_plot_of_a_hostile_run(hostile_run, tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "plot.png"
    result = _normscope("recommend", hostile_run, "--plot", plot)
    _ran(result, "recommend --plot")
    assert_inert(result.stdout + result.stderr, where="recommend --plot")
    assert plot.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("args", [("watch", "--once"), ("analyze",), ("analyze", "-f", "csv"),
                                  ("check", "--all")], ids=" ".join)
def test_every_view_of_a_hostile_live_log_is_inert(hostile_log, args):
    result = _normscope(*args[:1], hostile_log, *args[1:])
    _ran(result, " ".join(args), codes=(0, 1))
    assert_inert(result.stdout, where=f"{args} stdout")
    assert_inert(result.stderr, where=f"{args} stderr")
    assert "\\x3a:error title=x\\x3a:pwn" in result.stdout


def test_errors_naming_a_hostile_file_are_one_inert_line(tmp_path):
    run = tmp_path / HOSTILE_DIR
    run.mkdir()
    (run / HOSTILE_FILE).write_bytes(b"not a checkpoint")
    for target in (run, run / HOSTILE_FILE):
        result = _normscope("analyze", target)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("normscope: error: ")
        assert_inert(result.stderr, where="error message")
        assert "\\x3a:error title=x\\x3a:pwn" in result.stderr


# --- a real terminal ---------------------------------------------------------------------------------

# What rich itself writes to a terminal: SGR colours, erase-line, cursor moves and show/hide.
_RICH_OWN = re.compile(r"\x1b\[[0-9;]*[mKABCDG]|\x1b\[\?25[hl]|\r")


def _on_a_terminal(args: list[str], *, seconds: float, interrupt: bool) -> str:
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM", "COLUMNS", "LINES")}
    env.update(TERM="xterm-256color", FORCE_COLOR="1")
    process = subprocess.Popen([sys.executable, "-m", "normscope", *args], stdin=follower, stdout=follower,
                               stderr=follower, env=env, close_fds=True, start_new_session=True)
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + seconds
    interrupted = False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 and interrupt and not interrupted:
            process.send_signal(signal.SIGINT)
            interrupted, deadline = True, time.monotonic() + 60
            continue
        ready, _, _ = select.select([leader], [], [], max(0.05, min(remaining, 0.5)))
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the follower side closed: the process ended
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
        if remaining <= 0 and not interrupt and process.poll() is None and time.monotonic() > deadline + 120:
            process.kill()
            break
    process.wait(timeout=60)
    os.close(leader)
    return b"".join(chunks).decode("utf-8")


@pytest.mark.parametrize("args", [("analyze",), ("check", "--all"), ("recommend",)], ids=" ".join)
def test_colour_views_on_a_terminal_write_no_foreign_escape(hostile_run, args):
    raw = _on_a_terminal([args[0], str(hostile_run), *args[1:]], seconds=240, interrupt=False)
    assert "\x1b[" in raw, "the terminal view is in colour"
    foreign = _RICH_OWN.sub("", raw).replace("\r\n", "\n")
    assert_inert(foreign, where=f"{args} on a terminal")
    if args[0] != "recommend":  # recommend names layers, not tensors
        assert "\\x1b]0;OWNED\\x07" in raw  # shown, escaped


def test_live_watch_on_a_terminal_writes_no_foreign_escape(hostile_log):
    raw = _on_a_terminal(["watch", str(hostile_log), "--interval", "0.2"], seconds=12, interrupt=True)
    assert "\\x3a:error title=x\\x3a:pwn" in raw, raw[-2000:]
    foreign = _RICH_OWN.sub("", raw).replace("\r\n", "\n")
    assert_inert(foreign, where="watch on a terminal")
