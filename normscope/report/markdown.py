"""Markdown for `normscope report -o report.md`: the text file plus its PNGs beside it."""

from __future__ import annotations

from pathlib import Path

from normscope.report.document import Bullets, Figure, Paragraph, Report, Table


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(table: Table) -> list[str]:
    numeric = table.numeric or (False,) * len(table.columns)
    lines = ["| " + " | ".join(_cell(c) for c in table.columns) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.rows]
    if table.caption:
        lines += ["", f"*{table.caption}*"]
    return lines


def figure_filename(stem: str, figure: Figure) -> str:
    return f"{stem}_{figure.name}.png"


def render_markdown(report: Report, *, image_stem: str) -> str:
    """The Markdown text; figure i is referenced as `<image_stem>_<name>.png` beside the file."""
    lines = [f"# {report.title}", "", f"*{report.subtitle}*"]
    for section in report.sections:
        lines += ["", f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Paragraph):
                lines += [block.text, ""]
            elif isinstance(block, Bullets):
                lines += [f"- {item}" for item in block.items] + [""]
            elif isinstance(block, Table):
                lines += _table(block) + [""]
            elif isinstance(block, Figure):
                lines += [f"### {block.title}", "", f"![{block.title}]({figure_filename(image_stem, block)})", ""]
                if block.caption:
                    lines += [block.caption, ""]
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
