"""`normscope report`: HTML (self-contained, checked in a real headless chromium) and Markdown + PNGs."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
from matplotlib.image import imread
from reports_support import reduce_states, save_states, train_states

from normscope.errors import BadInputError
from normscope.report.documents.assemble import run_report
from normscope.report.documents.write import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    states, group = train_states(epochs=6)
    paths = save_states(states, tmp_path_factory.mktemp("run"))
    return run_report(reduce_states(states, group, paths))


def png_pixels(data: bytes) -> np.ndarray:
    return imread(io.BytesIO(data), format="png")


def test_every_figure_is_a_real_png_with_content(report):
    names = [f.name for f in report.figures]
    assert {"norms", "heatmap", "lr"} <= set(names)
    for figure in report.figures:
        pixels = png_pixels(figure.png)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 400
        assert pixels[..., :3].std() > 0.05  # not a blank canvas


def test_html_is_self_contained(report, tmp_path):
    (path,) = write_report(report, tmp_path / "report.html")
    html = path.read_text(encoding="utf-8")
    sources = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(sources) == len(report.figures)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    for source, figure in zip(sources, report.figures):
        assert base64.b64decode(source.partition(",")[2]) == figure.png
    assert not re.search(r'(src|href)="(https?:|//)', html)  # nothing fetched from elsewhere
    for heading in ("Run", "Per-layer norms", "Plots"):
        assert f"<h2>{heading}</h2>" in html
    assert "6.weight" in html and "SGD" in html


def test_markdown_writes_its_pngs_beside_it(report, tmp_path):
    written = write_report(report, tmp_path / "out.md")
    text = (tmp_path / "out.md").read_text(encoding="utf-8")
    pngs = [p for p in written if p.suffix == ".png"]
    assert len(pngs) == len(report.figures)
    for png in pngs:
        assert png.parent == tmp_path and f"]({png.name})" in text
        assert png_pixels(png.read_bytes())[..., :3].std() > 0.05
    assert "| parameter | kind |" in text


def test_unknown_report_suffix_is_refused(report, tmp_path):
    with pytest.raises(BadInputError, match="name it .html or .md"):
        write_report(report, tmp_path / "report.pdf")
    assert not (tmp_path / "report.pdf").exists()


def _chromium(*args: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120, check=False)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_html_renders_in_headless_chromium(report, tmp_path):
    (path,) = write_report(report, tmp_path / "report.html")
    # A probe copy records each image's decoded size once the page has loaded.
    probe = tmp_path / "probe.html"
    script = ("<script>window.addEventListener('load', () => document.body.setAttribute('data-probe', "
              "JSON.stringify([...document.images].map(i => [i.naturalWidth, i.naturalHeight]))));</script>")
    probe.write_text(path.read_text(encoding="utf-8").replace("</body>", script + "</body>"), encoding="utf-8")
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    found = re.search(r'data-probe="([^"]*)"', dom.stdout)
    assert found, dom.stderr[-2000:]
    sizes = json.loads(found.group(1).replace("&quot;", '"'))
    expected = [png_pixels(f.png).shape[1::-1] for f in report.figures]
    assert [tuple(s) for s in sizes] == [tuple(e) for e in expected]

    shot = tmp_path / "shot.png"
    _chromium(f"--screenshot={shot}", "--window-size=1200,2600", path.as_uri())
    pixels = png_pixels(shot.read_bytes())[..., :3]
    assert pixels.shape[:2] == (2600, 1200)
    plot_band = pixels[900:2400]  # where the figures sit: coloured lines and the heat-map
    assert plot_band.std() > 0.1
    saturation = plot_band.max(axis=2) - plot_band.min(axis=2)
    assert (saturation > 0.3).mean() > 0.01  # coloured plot pixels, not only black text on white


def test_report_of_the_sample_run_carries_the_recommendation(sgd_run_dir, tmp_path):
    from normscope.analysis.recommend import recommend_table
    from normscope.api import load_trajectory

    trajectory = load_trajectory(sgd_run_dir)
    rec = recommend_table(trajectory.table)
    report = run_report(trajectory)
    titles = [s.title for s in report.sections]
    assert "Bounce and learning-rate recommendation" in titles and "Not shown" not in titles
    assert "recommendation" in [f.name for f in report.figures]
    markdown = write_report(report, tmp_path / "r.md")[-1].read_text(encoding="utf-8")
    text = re.sub(r"\\(.)", r"\1", markdown)  # as the Markdown reads once rendered (its text is escaped)
    assert f"milestones=[{', '.join(map(str, rec.decay_epochs))}]" in text
    assert f"verdict at epoch {rec.verdict.at_epoch}: {rec.verdict.status}" in text


def test_analyses_that_cannot_run_are_listed_not_fatal(trained_short):
    report = run_report(trained_short)
    (skipped,) = [s for s in report.sections if s.title == "Not shown"]
    assert "bounce and learning-rate recommendation" in skipped.blocks[0].items[0]
    assert {"norms", "heatmap"} <= {f.name for f in report.figures}


@pytest.fixture
def trained_short():
    states, group = train_states(epochs=6)
    return reduce_states(states[:2], group)  # two snapshots: too short for the epoch analyses
