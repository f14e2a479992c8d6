"""What the views say about a run's schedule and settings is what the run holds: the exact rule's
minima are the norm's minima, per-layer decays are epochs, an annealed LR keeps its digits and two
param groups are two groups, not an anneal."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from normscope.cli import app

SAMPLES = Path(__file__).resolve().parent.parent / "sample_runs"


def _run(*args: object) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.stdout


def _sample(name: str) -> Path:
    run = SAMPLES / name
    return run if run.exists() else pytest.skip("no sample run")


def test_the_exact_rules_minimum_epoch_is_the_norms_minimum():
    document = json.loads(_run("recommend", _sample("digits_bn_cnn_sgd"), "-f", "json"))
    norm = dict(zip(document["norm"]["epochs"], document["norm"]["norm_sq"]))
    bounces = [d for d in document["exact"]["decays"] if d["reason"] == "bounce"]
    assert len(bounces) >= 2
    previous = min(norm)
    for decay in bounces:
        bottom = decay["minimum_epoch"]
        assert previous <= bottom < decay["epoch"], decay
        # a trough of the trajectory: lower than both neighbours, and than any epoch up to the decay
        assert norm[bottom] < norm[bottom - 1] and norm[bottom] < norm[bottom + 1], decay
        assert norm[bottom] == min(norm[e] for e in range(bottom, decay["epoch"] + 1)), decay
        previous = decay["epoch"]


def test_the_per_layer_exact_rule_column_shows_epochs_not_counts():
    run = _sample("digits_bn_cnn_sgd")
    document = json.loads(_run("recommend", run, "-f", "json"))
    text = _run("recommend", run)
    assert "exact-rule decay epochs" in text
    for layer in document["layers"]:
        row = next(line for line in text.splitlines() if line.startswith(f"{layer['layer']} "))
        epochs = ", ".join(map(str, layer["exact_decay_epochs"])) or "none"
        assert row.endswith(epochs), (row, epochs)


def test_a_cosine_lr_that_ends_at_0_and_two_param_groups_are_shown_as_they_are():
    run = _sample("digits_ln_transformer_adamw")
    header = next(line for line in _run("analyze", run).splitlines() if line.startswith("optimizer"))
    # the manifest: lr 0.003 with warmup and cosine to 0; group 0 decays with 0.1, group 1 not at all
    assert "largest 0.003" in header and "group 0: wd=0.1; group 1: wd=0" in header, header
    assert not re.search(r"lr=0(?![.\d])(?! \(last)", header), header
    document = json.loads(_run("analyze", run, "--equilibrium", "-f", "json"))
    used = {h["name"]: h["value"] for h in document["equilibrium"]["hyperparams"]}
    assert used["weight_decay"] == "per param group: 0.1, 0", used
    assert used["lr"].startswith("0 to 0.003 over the run"), used
