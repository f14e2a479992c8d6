"""The documented import path of the Lightning callback; it lives in `normscope.live.adapters.lightning`."""

from __future__ import annotations

from normscope.live.adapters.lightning import NormscopeCallback

__all__ = ["NormscopeCallback"]
