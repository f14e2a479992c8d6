"""Rendering of verdicts and the equilibrium report: terminal, JSON, PNG plots (sample SGD run)."""

from __future__ import annotations

import io
import json

import pytest
from _sample_tables import ADAMW_RUN, SGD_RUN, sample_trajectory
from rich.console import Console

from normscope.analysis.equilibrium import analyze_equilibrium
from normscope.report.machine.equilibrium_json import to_json
from normscope.report.plots.equilibrium_plots import plot_equilibrium, plot_ratio_heatmap
from normscope.report.terminal.equilibrium_view import (
    render_equilibrium,
    render_invariance,
)


@pytest.fixture(scope="module")
def sgd():
    return analyze_equilibrium(sample_trajectory(SGD_RUN))


def _text(renderable) -> str:
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_terminal_views(sgd):
    verdicts, report = sgd
    text = _text(render_invariance(verdicts))
    assert "block1.conv.weight" in text and "followed by BatchNorm block1.bn" in text
    text = _text(render_equilibrium(report))
    for needle in ("Hyper-parameters", "momentum", "approaching", "Theory does not apply", "head.weight"):
        assert needle in text, needle


def test_json_is_strict_and_complete(sgd):
    verdicts, report = sgd
    doc = json.loads(json.dumps(to_json(verdicts, report), allow_nan=False))
    assert doc["scale_invariant"]["block2.conv.weight"] is True
    assert doc["scale_invariant"]["head.weight"] is False
    assert {e["source"] for e in doc["evidence"]["block2.conv.weight"]} >= {"structure", "sgd_buffer"}
    layers = {layer["param"]: layer for layer in doc["equilibrium"]["layers"]}
    assert layers["block3.conv.weight"]["status"] == "approaching"
    assert len(layers["block3.conv.weight"]["points"]) == 60
    # every number shown in the table is in the JSON
    assert layers["block3.conv.weight"]["settled_ratio"] == pytest.approx(report.layers[2].settled_ratio)


def test_transformer_report_has_no_invariant_layer():
    verdicts, report = analyze_equilibrium(sample_trajectory(ADAMW_RUN))
    assert report.layers == ()
    assert "applies to none" in _text(render_equilibrium(report))
    assert len(report.not_applicable) == len(verdicts)


def test_plots_are_written(sgd, tmp_path):
    from matplotlib.image import imread

    _, report = sgd
    lines = plot_equilibrium(report, str(tmp_path / "sub" / "equilibrium.png"))
    heat = plot_ratio_heatmap(report, str(tmp_path / "heat.png"))
    for path, min_height in ((lines, 500), (heat, 150)):
        image = imread(path)
        assert image.shape[0] >= min_height and image.shape[1] >= 600
        assert image[..., :3].std() > 0.05  # not a blank canvas


def test_plots_refuse_an_empty_report(tmp_path):
    _, report = analyze_equilibrium(sample_trajectory(ADAMW_RUN))
    with pytest.raises(ValueError, match="no scale-invariant layer"):
        plot_equilibrium(report, str(tmp_path / "x.png"))
