"""Markdown for `normscope report -o report.md`: the text file plus its PNGs beside it."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from normscope.report.documents.document import Bullets, Figure, Paragraph, Report, Table
from normscope.report.escape import markdown_text

# The document holds plain text (names from the run among it), so every piece is escaped here.
_cell = markdown_text


def _table(table: Table) -> list[str]:
    numeric = table.numeric or (False,) * len(table.columns)
    lines = ["| " + " | ".join(_cell(c) for c in table.columns) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.rows]
    if table.caption:
        lines += ["", f"*{markdown_text(table.caption)}*"]
    return lines


def _link_target(filename: str) -> str:
    """A file name as a Markdown link target: percent-encoded, so `)`, spaces or `<` in the name of
    the report file cannot end the link or start HTML."""
    return quote(filename)


def figure_filename(stem: str, figure: Figure) -> str:
    return f"{stem}_{figure.name}.png"


def render_markdown(report: Report, *, image_stem: str) -> str:
    """The Markdown text; figure i is referenced as `<image_stem>_<name>.png` beside the file."""
    md = markdown_text
    lines = [f"# {md(report.title)}", "", f"*{md(report.subtitle)}*"]
    for section in report.sections:
        lines += ["", f"## {md(section.title)}", ""]
        for block in section.blocks:
            if isinstance(block, Paragraph):
                lines += [md(block.text), ""]
            elif isinstance(block, Bullets):
                lines += [f"- {md(item)}" for item in block.items] + [""]
            elif isinstance(block, Table):
                lines += _table(block) + [""]
            elif isinstance(block, Figure):
                image = _link_target(figure_filename(image_stem, block))
                lines += [f"### {md(block.title)}", "", f"![{md(block.title)}]({image})", ""]
                if block.caption:
                    lines += [md(block.caption), ""]
    return "\n".join(lines).rstrip() + "\n"


def write_markdown(report: Report, path: str | Path) -> list[Path]:
    """Write `path` and its PNGs in the same directory; returns every file written."""
    path = Path(path)
    stem = path.stem
    written = []
    for figure in report.figures:
        png = path.parent / figure_filename(stem, figure)
        png.write_bytes(figure.png)
        written.append(png)
    path.write_text(render_markdown(report, image_stem=stem), encoding="utf-8")
    written.append(path)
    return written
