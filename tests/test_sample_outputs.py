"""Every sample run's JSON and CSV output is byte-identical to the recorded one (see _sample_outputs)."""

from __future__ import annotations

import hashlib

import pytest

from _sample_outputs import commands, recorded, run_one

_RECORDED = recorded()


@pytest.mark.parametrize("name", sorted(commands()))
def test_output_is_byte_identical_to_the_recorded_one(name: str) -> None:
    output = run_one(commands()[name])
    assert output, f"{name}: empty output"
    assert hashlib.sha256(output).hexdigest() == _RECORDED[name], (
        f"{name} changed; if the change is meant, record it: python tests/_sample_outputs.py --write"
    )


def test_every_output_has_a_recorded_digest() -> None:
    assert set(commands()) == set(_RECORDED)
