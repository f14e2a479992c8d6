"""JSON from files normscope did not write itself: only finite numbers, bounded nesting.

Python's `json` reads `Infinity`, `NaN` and `1e400` (as inf) although JSON has no such numbers,
and a deeply nested array exhausts the interpreter's stack (RecursionError). A tracker log and a
safetensors header hold neither, so both are a malformed file: one ValueError.
"""

from __future__ import annotations

import json
import math
from typing import Any


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of the range of a float")
    return value


def loads(text: str | bytes, *, non_finite: bool = False) -> Any:
    """`json.loads`, raising ValueError (JSONDecodeError or plain) for anything malformed.

    `non_finite=True` lets `NaN`/`Infinity` through, for files whose writers emit them
    (`trainer_state.json` logs a NaN gradient norm as `NaN`); the caller checks what it uses.
    """
    try:
        if non_finite:
            return json.loads(text)
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
