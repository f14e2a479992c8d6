"""The scale-invariance verdicts and the equilibrium report as JSON (`normscope analyze --format json`)."""

from __future__ import annotations

from collections.abc import Sequence

from normscope.analysis.equilibrium import EquilibriumReport
from normscope.analysis.invariance import InvarianceVerdict
from normscope.report.machine.jsonable import jsonable

JSON_SCHEMA_VERSION = 1


def to_json(verdicts: Sequence[InvarianceVerdict], report: EquilibriumReport | None = None) -> dict:
    """JSON-safe dict: `scale_invariant` (param → true/false/null), `evidence` (param → records),
    `invariance` (the verdicts) and, when given, `equilibrium` (the full report)."""
    out: dict = {
        "schema_version": JSON_SCHEMA_VERSION,
        "scale_invariant": {v.param: v.invariant for v in verdicts},
        "evidence": {v.param: jsonable(list(v.evidence)) for v in verdicts},
        "invariance": [
            {"param": v.param, "layer": v.layer, "kind": v.kind, "verdict": v.verdict, "basis": v.basis, "reason": v.reason}
            for v in verdicts
        ],
    }
    if report is not None:
        out["equilibrium"] = jsonable(report)
    return out
