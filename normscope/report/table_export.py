"""The tidy trajectory table as CSV or Parquet (one row per snapshot × parameter)."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from normscope.errors import BadInputError


def to_csv_text(table: pd.DataFrame) -> str:
    buf = io.StringIO()
    table.to_csv(buf, index=False, float_format="%.10g")
    return buf.getvalue()


def write_parquet(table: pd.DataFrame, path: str | Path) -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise BadInputError(
            "--format parquet needs pyarrow: pip install 'normscope[parquet]'"
        ) from None
    table.to_parquet(path, index=False)
