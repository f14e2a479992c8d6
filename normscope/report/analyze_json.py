"""The JSON document `normscope analyze --format json` prints. Every number the terminal view shows
is in here; `schema_version` changes whenever a field is renamed or removed."""

from __future__ import annotations

from typing import Any

from normscope import __version__
from normscope.analysis.overview import Overview
from normscope.report.machine.equilibrium_json import to_json
from normscope.report.machine.jsonable import jsonable
from normscope.report.machine.recommend_json import bounce_analysis_json
from normscope.report.machine.rows_json import rows_json
from normscope.snapshot import SnapshotMeta
from normscope.trajectory import SCHEMA_VERSION, Trajectory


def snapshot_record(index: int, meta: SnapshotMeta) -> dict[str, Any]:
    return {
        "index": index,
        "step": meta.step,
        "epoch": meta.epoch,
        "path": meta.path,
        "order_source": meta.order_source,
        "optimizer": meta.optimizer,
        "hyperparams_source": meta.hyperparams_source,
        "param_groups": [
            {
                "lr": g.lr,
                "weight_decay": g.weight_decay,
                "momentum": g.momentum,
                "dampening": g.dampening,
                "nesterov": g.nesterov,
                "betas": list(g.betas) if g.betas is not None else None,
                "eps": g.eps,
                "decoupled_weight_decay": g.decoupled_weight_decay,
                "params": len(g.params),
            }
            for g in meta.param_groups
        ],
    }


def analyze_document(traj: Trajectory, result: Overview) -> dict[str, Any]:
    """The whole analyze result as JSON-safe data (NaN/Inf as null)."""
    sections: dict[str, Any] = {}
    if result.bounces is not None:
        sections["bounces"] = bounce_analysis_json(result.bounces)
    if result.invariance:
        found = to_json(result.invariance, result.equilibrium)
        found.pop("schema_version", None)  # the document's own schema_version covers it
        sections.update(found)
    if result.rows is not None:  # read with --granularity row
        sections["rows"] = rows_json(result.rows)
    live = getattr(result, "live", None)
    if live is not None:  # what `watch` shows: the latest record of each parameter, recent averages
        sections["live"] = {key: value for key, value in jsonable(live).items()
                            if key not in ("root", "layout", "warnings", "advice")}
    sections["skipped"] = dict(result.skipped)
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "normscope_version": __version__,
        "run": {
            "root": traj.root,
            "layout": traj.layout,
            "framework": traj.framework,
            "ordering": traj.ordering,
            "granularity": traj.granularity,
            "warnings": list(traj.warnings),
        },
        "snapshots": [snapshot_record(i, m) for i, m in enumerate(traj.snapshots)],
        "totals": result.run,
        "params": result.params,
    }
    doc.update(sections)
    return jsonable(doc)
