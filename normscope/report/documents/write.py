"""Write a report document to .html (self-contained) or .md (+ PNGs beside it), chosen by suffix."""

from __future__ import annotations

from pathlib import Path

from normscope.errors import BadInputError
from normscope.report.documents.document import Report
from normscope.report.documents.html import render_html
from normscope.report.documents.markdown import write_markdown

HTML_SUFFIXES = (".html", ".htm")
MARKDOWN_SUFFIXES = (".md", ".markdown")


def report_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in HTML_SUFFIXES:
        return "html"
    if suffix in MARKDOWN_SUFFIXES:
        return "markdown"
    raise BadInputError(f"cannot tell the report format from '{path}': name it .html or .md")


def write_report(report: Report, path: str | Path) -> list[Path]:
    """Write the report; returns the files written. The parent directory must exist."""
    path = Path(path)
    kind = report_format(path)
    if not path.parent.is_dir():
        raise BadInputError(f"directory does not exist: {path.parent}")
    if kind == "html":
        path.write_text(render_html(report), encoding="utf-8")
        return [path]
    return write_markdown(report, path)
