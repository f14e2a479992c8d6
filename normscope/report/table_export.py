"""The tidy trajectory table as CSV or Parquet (one row per snapshot × parameter).

CSV goes through pyarrow's writer where pyarrow is installed (the `parquet` extra), with every
cell formatted as pandas' writer formats it, so the text is the same byte for byte; pandas'
writer remains for tables pyarrow would write differently (a field that needs quotes, a column
of another type) and where pyarrow is missing. On a live log's table (15k rows) pandas spends
seconds formatting cells one Python call at a time. Here each distinct number is formatted
once (all of a column's in one `%`), and each distinct text escaped once.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from normscope.errors import BadInputError
from normscope.report.escape import csv_field

FLOAT_FORMAT = "%.10g"


def to_csv_text(table: pd.DataFrame) -> str:
    """The table as CSV. Text columns hold names from the run (paths, parameters, optimizer), so each
    text field goes through `csv_field`: one line per row, nothing a CI log or spreadsheet acts on."""
    written = _pyarrow_csv(table)
    if written is not None:
        return written
    text_columns = [c for c in table.columns if _is_text(table[c].dtype)]
    if text_columns:
        table = table.copy()
        for column in text_columns:
            table[column] = _escaped(table[column])
    buf = io.StringIO()
    table.to_csv(buf, index=False, float_format=FLOAT_FORMAT)
    return buf.getvalue()


def _is_text(dtype: Any) -> bool:
    return dtype == object or pd.api.types.is_string_dtype(dtype)


def _escaped(column: pd.Series) -> pd.Series:
    """`csv_field` of each text value (others as they are), computed once per distinct value: a
    table repeats each parameter name and path on many rows."""
    values = column.to_numpy(dtype=object)
    codes, distinct = pd.factorize(values)
    escaped = np.array([csv_field(v) if isinstance(v, str) else v for v in distinct] + [None], dtype=object)
    out = values.copy()
    present = codes >= 0
    out[present] = escaped[codes[present]]
    return pd.Series(out, index=column.index, dtype=object)


_QUOTED = '[,"\r\n]'  # what pandas' writer (QUOTE_MINIMAL) quotes a field for


def _pyarrow_csv(table: pd.DataFrame) -> str | None:
    """The CSV text pandas writes for `table`, written by pyarrow; None where pyarrow is missing
    or would write it differently."""
    try:
        import pyarrow as pa  # lazy: pyarrow is optional (the `parquet` extra)
        import pyarrow.compute as pc  # lazy: as above
        import pyarrow.csv as pa_csv  # lazy: as above
    except ImportError:
        return None
    names = [str(c) for c in table.columns]
    if os.linesep != "\n" or not names or table.empty or any(c in n for n in names for c in ',"\r\n'):
        return None
    arrays = [_cells(table[c], pa, pc) for c in table.columns]
    if any(a is None for a in arrays):
        return None
    out = io.BytesIO()
    # the header as pandas writes it (pyarrow quotes column names): none needs quotes, checked above
    out.write((",".join(names) + "\n").encode("utf-8"))
    pa_csv.write_csv(pa.Table.from_arrays(arrays, names=names), out,
                     pa_csv.WriteOptions(include_header=False, quoting_style="none"))  # fmt: skip
    return out.getvalue().decode("utf-8")


def _formatted(values: list[float], pa: Any, pc: Any) -> Any:
    """`FLOAT_FORMAT % v` of each value as a pyarrow string array: formatted in one `%` of a joined
    format, then split by pyarrow (no Python string per value)."""
    if not values:
        return pa.array([], type=pa.string())
    text = "\n".join([FLOAT_FORMAT] * len(values)) % tuple(values)
    return pc.split_pattern(pa.array([text], type=pa.string()), "\n").flatten()


def _text_cells(column: pd.Series, pa: Any, pc: Any) -> Any:
    """A text column's CSV fields (`csv_field` of each value) as pyarrow strings, each distinct
    value escaped once; None where a field would need quotes (pandas' writer quotes it)."""
    values = column.to_numpy(dtype=object) if column.dtype == object else None
    if values is not None:
        missing = pd.isna(values)
        if pd.api.types.infer_dtype(values[~missing], skipna=False) not in ("string", "empty"):
            return None
        arrow = pa.array(values, type=pa.string(), from_pandas=True)
    else:
        arrow = pa.array(column.array)
        if isinstance(arrow, pa.ChunkedArray):
            arrow = arrow.combine_chunks()
        if not (pa.types.is_string(arrow.type) or pa.types.is_large_string(arrow.type)):
            return None
    encoded = pc.dictionary_encode(arrow)
    distinct = [csv_field(v) for v in encoded.dictionary.to_pylist()]
    escaped = pa.array(distinct, type=pa.string())
    if len(escaped) and pc.any(pc.match_substring_regex(escaped, _QUOTED)).as_py():
        return None
    return escaped.take(encoded.indices)


def _cells(column: pd.Series, pa: Any, pc: Any) -> Any:
    """One column as pyarrow writes the text pandas writes for it (None: leave it to pandas)."""
    dtype = column.dtype
    if dtype == np.float64:
        values = column.to_numpy()
        # each distinct value formatted once (a column of learning rates repeats a few); distinct
        # by bit pattern, so -0.0 stays "-0"
        bits, inverse = np.unique(values.view(np.int64), return_inverse=True)
        formatted = _formatted(bits.view(np.float64).tolist(), pa, pc)
        return formatted.take(pa.array(inverse.ravel(), mask=np.isnan(values)))
    if dtype == np.int64:
        return pa.array(column.to_numpy(), type=pa.int64())
    if isinstance(dtype, pd.Int64Dtype):
        return pa.array(column.to_numpy(dtype=np.int64, na_value=0), type=pa.int64(),
                        mask=column.isna().to_numpy())  # fmt: skip
    if dtype == np.bool_:
        return pa.array(np.where(column.to_numpy(), "True", "False"), type=pa.string())
    if _is_text(dtype):
        return _text_cells(column, pa, pc)
    return None


def write_parquet(table: pd.DataFrame, path: str | Path) -> None:
    try:
        import pyarrow  # noqa: F401  # lazy: pyarrow is optional (the `parquet` extra)
    except ImportError:
        raise BadInputError(
            "--format parquet needs pyarrow: pip install 'normscope[parquet]'"
        ) from None
    table.to_parquet(path, index=False)
