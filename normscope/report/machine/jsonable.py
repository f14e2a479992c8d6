"""Turn analysis results into JSON-safe values: NaN/Inf become null, dataclasses become dicts."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd

# a dataclass's field names by its type (None: not a dataclass): what a result is made of is a few
# dozen types, and a run of thousands of parameters holds a million values of them
_FIELDS: dict[type, tuple[str, ...] | None] = {}


def jsonable(value: Any) -> Any:
    """`value` as JSON-safe data. The types results are made of (plain numbers and text, lists,
    tuples, dicts, dataclasses) are told apart by their exact type first; anything else (numpy
    scalars, subclasses, pandas' missing values) by `_other`."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is list or kind is tuple:
        return [jsonable(v) for v in value]
    if kind is dict:
        return {str(k): jsonable(v) for k, v in value.items()}
    names = _FIELDS.get(kind, ())
    if names == ():
        names = _FIELDS[kind] = (tuple(f.name for f in dataclasses.fields(kind))
                                 if dataclasses.is_dataclass(kind) else None)
    if names is not None:
        return {name: jsonable(getattr(value, name)) for name in names}
    return _other(value)


def _other(value: Any) -> Any:
    """Values of the other types (a dataclass instance never gets here: its type is in `_FIELDS`)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    try:  # pandas NA and friends
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)
