"""`--model package.module:factory`: builds the user's model, or fails with one clear line."""

from __future__ import annotations

import sys

import pytest
from torch import nn

from normscope.analysis.user_model import (
    MODEL_OPTION_HELP,
    build_model,
    parse_model_spec,
)
from normscope.errors import BadInputError


def test_builds_the_sample_model():
    model = build_model("sample_runs.models:bn_cnn")
    assert isinstance(model, nn.Module)
    assert "block1.conv.weight" in dict(model.named_parameters())


def test_help_says_it_runs_user_code():
    assert "IMPORTS AND RUNS" in MODEL_OPTION_HELP


@pytest.mark.parametrize("spec", ["sample_runs.models", "sample_runs.models:", ":bn_cnn", "a b:c", "x:1y"])
def test_malformed_specs(spec):
    with pytest.raises(BadInputError, match="package.module:factory"):
        parse_model_spec(spec)


def _user_module(tmp_path, monkeypatch, source: str) -> str:
    name = f"user_factory_{abs(hash(source)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


@pytest.mark.parametrize(
    ("source", "attr", "message"),
    [
        ("import no_such_package_xyz\n", "f", "cannot import"),
        ("raise RuntimeError('boom\\nsecond line')\n", "f", "RuntimeError: boom"),
        ("x = 1\n", "f", "has no attribute 'f'"),
        ("f = 3\n", "f", "is not callable"),
        ("def f():\n    raise ValueError('bad config')\n", "f", r"f\(\) failed: ValueError: bad config"),
        ("def f():\n    return 'not a model'\n", "f", "returned str, not a torch.nn.Module"),
    ],
)
def test_user_code_errors_are_one_line(tmp_path, monkeypatch, source, attr, message):
    name = _user_module(tmp_path, monkeypatch, source)
    with pytest.raises(BadInputError, match=message) as info:
        build_model(f"{name}:{attr}")
    assert "\n" not in str(info.value)


def test_user_factory_from_the_current_directory(tmp_path, monkeypatch):
    name = _user_module(tmp_path, monkeypatch, "import torch\ndef make():\n    return torch.nn.Linear(2, 3)\n")
    assert isinstance(build_model(f"{name}:make"), nn.Linear)
    assert str(tmp_path) not in sys.path  # the search path is restored afterwards
