"""`json_indent.indented` writes `json.dumps(..., indent=N, allow_nan=False)`'s text byte for byte,
and leaves whatever it does not write itself to `json.dumps` (so its errors are json's)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from normscope.report.escape import json_text
from normscope.report.json_indent import indented

leaves = (st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
          | st.floats(allow_nan=False, allow_infinity=False) | st.text())
documents = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=5) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=40)


@settings(max_examples=400, deadline=None)
@given(documents, st.sampled_from([2, 4, 0]))
def test_the_same_text_as_json_dumps(document, indent):
    assert indented(document, indent) == json.dumps(document, indent=indent, allow_nan=False)


@pytest.mark.parametrize("document", [
    [], {}, [[]], {"a": {}}, "", -0.0, 1e300, 5e-324, 2**70, True, None,
    {"control \x00\x1f\u2028 and ünïcode 🎉": ["\\", '"', "\t"]},
])
def test_edge_values(document):
    assert indented(document) == json.dumps(document, indent=2, allow_nan=False)


@pytest.mark.parametrize("document", [
    {1: "a number as a key"}, {None: 1, True: 2, 2.5: 3}, [np.float64(1.5)], {"a": [np.int64(3)]},
])
def test_what_it_does_not_write_goes_to_json_dumps(document):
    try:
        expected = json.dumps(document, indent=2, allow_nan=False)
    except TypeError as exc:
        with pytest.raises(TypeError, match=str(exc)):
            indented(document)
        return
    assert indented(document) == expected


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_number_is_refused_as_json_refuses_it(value):
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        json_text({"x": [1.0, value]})


def test_json_text_keeps_its_escape_and_compact_form():
    document = {"name": "##[error]x", "values": [1, 2.5, None]}
    assert json_text(document) == json.dumps(document, indent=2).replace("##[", "##\\u005b")
    assert json_text(document, indent=None) == json.dumps(document).replace("##[", "##\\u005b")
