"""`analyze -f csv`: written by pyarrow where it is installed, the same bytes as pandas' writer."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from normscope.api import load_trajectory
from normscope.report import table_export
from normscope.report.escape import csv_field

SAMPLE_RUNS = Path(__file__).resolve().parent.parent / "sample_runs"

pytest.importorskip("pyarrow")


def _pandas_csv(table: pd.DataFrame) -> str:
    """What `to_csv_text` wrote before pyarrow: pandas' writer over the escaped text columns."""
    table = table.copy()
    for column in table.columns:
        if table[column].dtype == object or pd.api.types.is_string_dtype(table[column]):
            table[column] = table[column].map(lambda v: csv_field(v) if isinstance(v, str) else v)
    buf = io.StringIO()
    table.to_csv(buf, index=False, float_format="%.10g")
    return buf.getvalue()


@pytest.mark.parametrize("run", ["digits_bn_cnn_sgd", "digits_ln_transformer_adamw",
                                 "digits_bn_cnn_live/track.jsonl"])  # fmt: skip
def test_the_csv_of_every_sample_run_is_pandas_bytes_written_by_pyarrow(run):
    table = load_trajectory(str(SAMPLE_RUNS / run)).table
    assert table_export._pyarrow_csv(table) is not None  # the pyarrow writer took it
    assert table_export.to_csv_text(table) == _pandas_csv(table)


def test_fields_pandas_would_quote_and_other_columns_fall_back_to_pandas():
    table = pd.DataFrame({
        "param": ["a,b", 'q"uote', "=formula", None],  # quoted by pandas; a formula neutralised
        "norm": [1.0, float("nan"), -0.0, 1e-300],
        "numel": pd.array([1, None, 3, 4], dtype="Int64"),
        "flag": [True, False, True, False],
    })
    assert table_export._pyarrow_csv(table) is None
    assert table_export.to_csv_text(table) == _pandas_csv(table)
    plain = table.assign(param=["a", "b", "=c", None])
    assert table_export._pyarrow_csv(plain.assign(param=["a", "b", "'=c", None])) is not None
    assert table_export.to_csv_text(plain) == _pandas_csv(plain)
