"""The former name of `normscope.lr_schedules`, kept so that existing imports keep working.

Import from `normscope.lr_schedules` instead; importing it warns.
"""

from __future__ import annotations

import warnings

from normscope.lr_schedules import (
    TexpEpoch,
    TexpSchedule,
    larger_root,
    multistep_line,
    step_schedule,
    texp_initial_buffer_factor,
    texp_log_lrs,
    texp_schedule,
)

warnings.warn("normscope.schedules is now normscope.lr_schedules; import from there",
              DeprecationWarning, stacklevel=2)

__all__ = ["TexpEpoch", "TexpSchedule", "larger_root", "multistep_line", "step_schedule",
           "texp_initial_buffer_factor", "texp_log_lrs", "texp_schedule"]
