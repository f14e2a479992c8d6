"""Self-contained HTML for `normscope report -o report.html`: one file, PNGs embedded as base64."""

from __future__ import annotations

import base64

from normscope.report.documents.document import Bullets, Figure, Paragraph, Report, Table
from normscope.report.escape import html_text as escape

_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       padding: 0 1rem; color: #1d1d1f; }
h1 { font-size: 1.7rem; margin-bottom: .2rem; } .subtitle { color: #666; margin-top: 0; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: 13px; margin: .8rem 0; }
th, td { border: 1px solid #ddd; padding: .25rem .55rem; } th { background: #f4f4f6; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; } code { background: #f4f4f6; padding: 0 .2rem; }
.table-wrap { overflow-x: auto; }
"""


def _table(table: Table) -> str:
    numeric = table.numeric or (False,) * len(table.columns)
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{escape(v)}</td>' if n else f"<td>{escape(v)}</td>"
                         for v, n in zip(row, numeric)) + "</tr>"
        for row in table.rows
    )
    caption = f"<caption>{escape(table.caption)}</caption>" if table.caption else ""
    return f'<div class="table-wrap"><table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _figure(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    caption = f"<figcaption>{escape(figure.caption)}</figcaption>" if figure.caption else ""
    return (f'<figure id="fig-{escape(figure.name)}"><img alt="{escape(figure.title)}" '
            f'src="data:image/png;base64,{data}">{caption}</figure>')


def render_html(report: Report) -> str:
    head = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(report.title)}</title><style>{_STYLE}</style></head><body>")
    parts = [head,
             f"<h1>{escape(report.title)}</h1><p class=\"subtitle\">{escape(report.subtitle)}</p>"]
    for section in report.sections:
        parts.append(f"<section><h2>{escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Paragraph):
                parts.append(f"<p>{escape(block.text)}</p>")
            elif isinstance(block, Bullets):
                parts.append("<ul>" + "".join(f"<li>{escape(i)}</li>" for i in block.items) + "</ul>")
            elif isinstance(block, Table):
                parts.append(_table(block))
            elif isinstance(block, Figure):
                parts.append(f"<h3>{escape(block.title)}</h3>" + _figure(block))
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
