"""The documented import path of the 🤗 Trainer callback; it lives in `normscope.live.adapters.hf`."""

from __future__ import annotations

from normscope.live.adapters.hf import DEFAULT_LOG_NAME, NormscopeTrainerCallback

__all__ = ["DEFAULT_LOG_NAME", "NormscopeTrainerCallback"]
