"""JUnit XML for `normscope check --junit FILE`: one test case per rule × parameter.

GitLab (`artifacts: reports: junit:`), Jenkins and most CI viewers read this. Errors are
<failure>s; warnings pass, with the message in <system-out>, so they show without failing the job.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from normscope.check.findings import ERROR, WARNING, CheckResult, Finding
from normscope.report.escape import printable

# Characters XML 1.0 cannot hold at all, even escaped (control characters other than \t \n \r).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _text(value: object) -> str:
    """One piece of text from the run (ElementTree then escapes it for XML)."""
    return _NOT_XML.sub("\ufffd", printable(value))


def _details(finding: Finding) -> str:
    lines = [_text(finding.message)]
    for label, value in (("value", finding.value), ("limit", finding.limit), ("snapshot", finding.snapshot),
                         ("path", finding.path), ("config", finding.config_key)):
        if value is not None:
            lines.append(f"{label}: {_text(value)}")
    return "\n".join(lines)


def junit_tree(result: CheckResult, *, suite_name: str = "normscope check") -> ET.ElementTree:
    """The JUnit document as an ElementTree (ElementTree does the escaping)."""
    counts = Counter(f.status for f in result.findings)
    attrs = {"tests": str(len(result.findings)), "failures": str(counts[ERROR]), "errors": "0",
             "skipped": "0", "time": "0"}
    root = ET.Element("testsuites", {"name": suite_name, **attrs})
    suite = ET.SubElement(root, "testsuite", {"name": _text(f"{suite_name}: {result.run_path}"), **attrs})
    properties = ET.SubElement(suite, "properties")
    for name, value in (("run", result.run_path), ("baseline", result.baseline_path),
                        ("config", result.config_file), ("rules", ",".join(result.rules))):
        if value:
            ET.SubElement(properties, "property", {"name": name, "value": _text(value)})
    for finding in result.findings:
        case = ET.SubElement(suite, "testcase", {
            "classname": _text(f"normscope.{finding.rule}"), "name": _text(finding.subject), "time": "0",
        })
        if finding.status == ERROR:
            failure = ET.SubElement(case, "failure", {"message": _text(finding.message), "type": finding.rule})
            failure.text = _details(finding)
        elif finding.status == WARNING:
            out = ET.SubElement(case, "system-out")
            out.text = "warning: " + _details(finding)
    ET.indent(root)
    return ET.ElementTree(root)


def junit_xml(result: CheckResult) -> str:
    """The JUnit document as text, with an XML declaration."""
    body = ET.tostring(junit_tree(result).getroot(), encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"


def write_junit(result: CheckResult, path) -> None:
    Path(path).write_text(junit_xml(result), encoding="utf-8")
