"""The tracker's JSON Lines log format, shared by the writer (`normscope.track`) and the reader.

One JSON object per line, UTF-8, strict JSON (non-finite numbers are written as null):

    {"type": "header", "schema": "normscope.track", "schema_version": 1, "run_id": ..., "every": N,
     "optimizer": "SGD", "params": [{"name", "shape", "dtype", "numel", "group"}, ...],
     "param_groups": [{"params": [names], "lr", "weight_decay", "momentum", "betas", ...}], ...}
    {"type": "step", "step": 10, "epoch": 0.0, "time": 1700000000.0,
     "groups": [{"lr", "weight_decay", "momentum", "betas", ...}],          # in force for this step
     "w_sq": [...], "w0_sq": [...], "g_sq": [...], "wg": [...], "dw_sq": [...], "nonfinite": [...]}

Per-parameter arrays follow the header's `params` order:
    w_sq   |w|^2 after the step          w0_sq  |w|^2 before the step (where g was taken)
    g_sq   |g|^2 (null: no gradient)     wg     <w before the step, g>
    dw_sq  |Δw|^2 of the step's update   nonfinite  NaN/Inf elements in w after the step

This module must stay importable without torch.
"""

from __future__ import annotations

import json
import math
from typing import Any

SCHEMA_NAME = "normscope.track"
SCHEMA_VERSION = 1
HEADER_TYPE = "header"
STEP_TYPE = "step"

# per-parameter arrays of a step record, in the order the reducer stacks them
STAT_FIELDS = ("w_sq", "w0_sq", "g_sq", "wg", "dw_sq")
NONFINITE_FIELD = "nonfinite"

# optimizer param_group keys worth recording (whatever of them the optimizer has)
GROUP_KEYS = ("lr", "weight_decay", "momentum", "dampening", "nesterov", "betas", "eps",
              "decoupled_weight_decay")


def plain(value: Any) -> Any:
    """A JSON-safe copy: tensors and numpy scalars become floats, non-finite floats become null."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    try:
        number = float(value)  # python/numpy floats and 0-d tensors
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None


def encode_line(record: dict[str, Any]) -> str:
    """One whole line (newline included), so the writer can emit it with a single write call."""
    return json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
