"""The JSON document `normscope check --format json` prints: every finding, passing ones included."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from normscope import __version__
from normscope.check.findings import CheckResult
from normscope.config import Origin
from normscope.report.machine.jsonable import jsonable

CHECK_SCHEMA_VERSION = 1


def check_document(result: CheckResult, origins: Mapping[str, Origin] | None = None) -> dict[str, Any]:
    doc = {
        "schema_version": CHECK_SCHEMA_VERSION,
        "normscope_version": __version__,
        "run": result.run_path,
        "baseline": result.baseline_path,
        "config_file": result.config_file,
        "passed": result.passed,
        "exit_code": result.exit_code,
        "counts": result.counts(),
        "rules": list(result.rules),
        "settings_from": {key: origin.describe() for key, origin in (origins or {}).items()},
        "findings": [f.to_dict() for f in result.findings],
    }
    return jsonable(doc)
