"""The live side of normscope: log weight dynamics from inside the training loop, read the log
while it is written, and show the run as it trains (`normscope watch`).

    normscope.live.tracker    `track(model, optimizer, path, every=...)` and its `Tracker`: hooks on
                              `optimizer.step` that append one JSON line per logged step
    normscope.live.reduce     the on-device reduction of a logged step's statistics
    normscope.live.schema     the log's format: record types, fields, the header
    normscope.live.log        reading a log whole (`read_jsonl_log`) or following it (`LogFollower`),
                              and the layout registry's entry for tracker logs (`TrackerLogs`)
    normscope.live.source     `LiveSource`: what `watch` follows (a log incrementally, checkpoints by
                              re-reading)
    normscope.live.frame      the frame `watch` shows (`LiveFrame`, `frame_of` a run's analysis)
    normscope.live.view       `live_frame` and `LiveView`, which keeps the frame up to date as a
                              log grows
    normscope.live.render     the frame for the terminal (rich)
    normscope.live.adapters   Lightning and 🤗 Trainer callbacks (`normscope.integrations.*`)

The names below are this package's public surface; each is imported on first use, so importing
`normscope.live` imports neither torch nor pandas.
"""

from __future__ import annotations

from normscope._lazy import lazy_attributes

# public name -> module that defines it
_LAZY = {
    "track": "normscope.live.tracker",
    "Tracker": "normscope.live.tracker",
    "SCHEMA_NAME": "normscope.live.schema",
    "SCHEMA_VERSION": "normscope.live.schema",
    "LAYOUT": "normscope.live.log",
    "LiveLog": "normscope.live.log",
    "LogFollower": "normscope.live.log",
    "TrackerLogs": "normscope.live.log",
    "find_log_file": "normscope.live.log",
    "is_jsonl_log": "normscope.live.log",
    "load_live_log": "normscope.live.log",
    "read_jsonl_log": "normscope.live.log",
    "LiveSource": "normscope.live.source",
    "LayerLive": "normscope.live.frame",
    "LiveFrame": "normscope.live.frame",
    "LiveView": "normscope.live.view",
    "equilibrium_angle": "normscope.live.frame",
    "frame_of": "normscope.live.frame",
    "equilibrium_status": "normscope.live.view",
    "live_advice": "normscope.live.view",
    "live_frame": "normscope.live.view",
    "render_frame": "normscope.live.render",
    "NormscopeCallback": "normscope.live.adapters.lightning",
    "NormscopeTrainerCallback": "normscope.live.adapters.hf",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())


__all__ = sorted(_LAZY)
