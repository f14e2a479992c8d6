"""The tidy trajectory table as CSV or Parquet (one row per snapshot × parameter)."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from normscope.errors import BadInputError
from normscope.report.escape import csv_field


def to_csv_text(table: pd.DataFrame) -> str:
    """The table as CSV. Text columns hold names from the run (paths, parameters, optimizer), so each
    text field goes through `csv_field`: one line per row, nothing a CI log or spreadsheet acts on."""
    text_columns = [c for c in table.columns if table[c].dtype == object or pd.api.types.is_string_dtype(table[c])]
    if text_columns:
        table = table.copy()
        for column in text_columns:
            table[column] = table[column].map(lambda v: csv_field(v) if isinstance(v, str) else v)
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
