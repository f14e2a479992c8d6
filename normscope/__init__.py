"""normscope: weight-dynamics analysis of neural-network training runs.

The package imports lazily so that `normscope --help` and `import normscope` stay fast and do not
import torch until a function that needs it is used.
"""

from __future__ import annotations

from normscope._lazy import lazy_attributes

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "open_run": "normscope.sources",
    "compute_stats": "normscope.engine",
    "build_trajectory": "normscope.trajectory",
    "Trajectory": "normscope.trajectory",
    "load_trajectory": "normscope.api",
    "overview": "normscope.analysis.overview",
    "analyze_run": "normscope.analysis.runner",
    "RunAnalysis": "normscope.analysis.runner",
    "RunOptions": "normscope.analysis.runner",
    "ABEL": "normscope.schedulers",
    # the module is `tracker` so that `normscope.track` stays the function, not a submodule
    "track": "normscope.live.tracker",
    "Tracker": "normscope.live.tracker",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())


__all__ = [
    "ABEL",
    "RunAnalysis",
    "RunOptions",
    "Tracker",
    "Trajectory",
    "__version__",
    "analyze_run",
    "build_trajectory",
    "compute_stats",
    "load_trajectory",
    "open_run",
    "overview",
    "track",
]
