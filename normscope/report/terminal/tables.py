"""The one table style of every terminal view, and tables laid out for the width they get.

Every rich table the CLI prints is made by `styled_table` (one box, one header style, one padding).
`FitTable` adds the layout rules for a narrow page: a number is never cut (a numeric column is as wide
as its widest value), text columns (names, messages) wrap, headers wrap at their spaces, and where the
page is still too narrow the columns with the lowest value are left out, in the order each view
declares, with one line under the table that names them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from rich.box import SIMPLE_HEAD
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

BOX = SIMPLE_HEAD
HEADER_STYLE = "bold"
PADDING = (0, 1)
GAP = 3  # between two columns: the right padding, the (blank) rule, the left padding
# a parameter name is folded only past this width: low-value columns are left out before that
NAME_WIDTH = 28

# a word that reads as a number (with its sign, unit or brackets): never broken across lines
_NUMBER_WORD = re.compile(r"[(\[]*[-+x×]?(?:\d[\d.,:]*(?:e[-+]?\d+)?)[%°σ×x)\]]*[,;:]?(?:[–-][-+]?\d[\d.]*[%°)\]]*[,;]?)?")


def styled_table(title: str | Text | None = None, caption: str | Text | None = None, **kwargs) -> Table:
    """A rich Table in the style of every normscope view: a rule under the header, no outer edge."""
    kwargs.setdefault("expand", False)
    return Table(title=title, caption=caption, box=BOX, show_edge=False, pad_edge=False,
                 header_style=HEADER_STYLE, padding=PADDING, title_justify="left", caption_justify="left",
                 title_style="bold", caption_style="dim", **kwargs)


@dataclass(frozen=True)
class Col:
    """One column of a `FitTable`. `drop`: its place in the order columns are left out on a narrow page
    (1 goes first; None: always shown). `wrap`: cells that may wrap onto more lines, down to
    `min_width`, at their spaces (a number is never broken); right-justified wrapping columns
    (numbers with their spread) wrap before left-justified ones (names, messages)."""

    header: str
    justify: str = "right"
    drop: int | None = None
    wrap: bool = False
    min_width: int = 12


def _plain(cell: str | Text) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


def _longest_word(text: str, numbers_only: bool = False) -> int:
    words = text.split()
    if numbers_only:
        words = [w for w in words if _NUMBER_WORD.fullmatch(w)]
    return max((cell_len(w) for w in words), default=0)


def _longest_line(text: str) -> int:
    return max((cell_len(line) for line in text.split("\n")), default=0)


class FitTable:
    """A table that lays itself out for the width it is rendered at (see the module docstring)."""

    def __init__(self, columns: Sequence[Col], rows: Sequence[Sequence[str | Text]], *,
                 title: str | Text | None = None, caption: str | None = None,
                 row_styles: Sequence[str | None] | None = None):
        self.columns = tuple(columns)
        self.rows = [tuple(row) for row in rows]
        self.title, self.caption = title, caption
        self.row_styles = list(row_styles) if row_styles is not None else [None] * len(self.rows)
        self.natural: list[int] = []
        self.minimum: list[int] = []
        for i, col in enumerate(self.columns):
            texts = [_plain(row[i]) for row in self.rows]
            widest = max((_longest_line(t) for t in texts), default=0)
            header_word = _longest_word(col.header)
            self.natural.append(max(widest, cell_len(col.header), 1))
            if col.wrap:
                unbreakable = max((_longest_word(t, numbers_only=True) for t in texts), default=0)
                self.minimum.append(max(header_word, unbreakable, min(widest, col.min_width), 1))
            else:
                self.minimum.append(max(widest, header_word, 1))

    def layout(self, width: int) -> tuple[list[int], list[int]]:
        """The columns shown at `width` and the width of each."""
        shown = list(range(len(self.columns)))

        def needed(widths) -> int:
            return sum(widths[i] for i in shown) + GAP * (len(shown) - 1)

        droppable = sorted((c.drop, i) for i, c in enumerate(self.columns) if c.drop is not None)
        for _, i in droppable:
            if needed(self.minimum) <= width:
                break
            shown.remove(i)
        widths = list(self.natural)
        excess = needed(widths) - width
        # narrow the headers of the numeric columns first (one more header line), then wrap the
        # numeric columns that may (a value and its spread), then the text (names, messages), the
        # widest first
        def phase(col: Col) -> int:
            return 0 if not col.wrap else 1 if col.justify == "right" else 2

        for step in (0, 1, 2):
            while excess > 0:
                candidates = [i for i in shown if phase(self.columns[i]) == step and widths[i] > self.minimum[i]]
                if not candidates:
                    break
                widest = max(candidates, key=lambda i: widths[i])
                widths[widest] -= 1
                excess -= 1
        return shown, [widths[i] for i in shown]

    def table(self, width: int) -> Table:
        shown, widths = self.layout(width)
        left_out = [self.columns[i].header for i in range(len(self.columns)) if i not in shown]
        caption = self.caption
        if left_out:
            missing = f"left out at this width: {', '.join(left_out)} (a wider page shows them)"
            caption = f"{caption}\n{missing}" if caption else missing
        table = styled_table(self.title, caption)
        for i, w in zip(shown, widths):
            col = self.columns[i]
            table.add_column(col.header, justify=col.justify, width=w, overflow="fold")
        for row, style in zip(self.rows, self.row_styles):
            table.add_row(*(row[i] for i in shown), style=style)
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.table(options.max_width)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        shown, widths = self.layout(options.max_width)
        return Measurement(sum(widths) + GAP * (len(shown) - 1), sum(self.natural) + GAP * (len(self.natural) - 1))


__all__ = ["BOX", "Col", "FitTable", "HEADER_STYLE", "NAME_WIDTH", "styled_table"]
