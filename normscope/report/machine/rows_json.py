"""The per-neuron (per-row) equilibrium as JSON, `--granularity row --format json`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from normscope.analysis.row_equilibrium import RowInterval
from normscope.report.machine.jsonable import jsonable
from normscope.report.quantities import ROW_PREDICTION


def rows_json(intervals: Sequence[RowInterval]) -> dict[str, Any]:
    """Every tensor and interval's per-row summary (`row_equilibrium.RowEquilibrium` fields)."""
    return jsonable({
        "prediction": ROW_PREDICTION,
        "intervals": [{"snapshot": i.snapshot, "step": i.step, "lr": i.lr, "settled": i.settled,
                       **jsonable(i.result)} for i in intervals],
    })
