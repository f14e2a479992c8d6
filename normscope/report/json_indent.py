"""Indented JSON text without the pure-Python encoder's cost.

`json.dumps(..., indent=2)` cannot use the standard library's C encoder (it only writes compact
text) and falls back to a generator per value, seconds for the document of a run of thousands of
scale-invariant weights (docs/benchmarks.md, "Analyses at scale"). `indented` writes the same text,
byte for byte, by direct recursion over the plain types JSON documents are made of here
(`normscope.report.machine.jsonable` gives nothing else), with the C string encoder and
`float.__repr__` for the leaves; anything else goes to `json.dumps` whole.
"""

from __future__ import annotations

import json
import math
from json.encoder import encode_basestring_ascii
from typing import Any


class _Unplain(Exception):
    """A value outside the plain types: the caller's `json.dumps` takes the whole document."""


def indented(document: Any, indent: int = 2) -> str:
    """`json.dumps(document, indent=indent, allow_nan=False)`, the same text."""
    parts: list[str] = []
    try:
        _write(document, parts, "\n", " " * indent)
    except _Unplain:
        return json.dumps(document, indent=indent, allow_nan=False)
    return "".join(parts)


def _leaf(value: Any) -> str | None:
    """The text of a number, string, boolean or null; None for anything else."""
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            raise _Unplain  # json.dumps says why it refuses it
        return float.__repr__(value)
    if kind is str:
        return encode_basestring_ascii(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if kind is int:
        return int.__repr__(value)
    return None


def _write(value: Any, parts: list[str], newline: str, step: str) -> None:
    text = _leaf(value)
    if text is not None:
        parts.append(text)
        return
    kind = type(value)
    if kind is list or kind is tuple:
        _members("[]", (("", item) for item in value), len(value), parts, newline, step)
    elif kind is dict:
        _members("{}", ((_key(key), item) for key, item in value.items()), len(value), parts, newline, step)
    else:
        raise _Unplain


def _key(key: Any) -> str:
    if type(key) is not str:
        raise _Unplain  # json.dumps's own rules for numbers, booleans and None as keys
    return encode_basestring_ascii(key) + ": "


def _members(brackets: str, members, count: int, parts: list[str], newline: str, step: str) -> None:
    """A list's items or a dict's (key text, value) pairs, one a line, one step deeper."""
    if not count:
        parts.append(brackets)
        return
    inner = newline + step
    separator = "," + inner
    parts.append(brackets[0] + inner)
    first = True
    for prefix, item in members:
        if first:
            first = False
        else:
            parts.append(separator)
        text = _leaf(item)
        if text is None:
            parts.append(prefix)
            _write(item, parts, inner, step)
        else:
            parts.append(prefix + text)
    parts.append(newline + brackets[1])


__all__ = ["indented"]
