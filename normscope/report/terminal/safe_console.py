"""The rich Console every command prints through: no markup, and a last check on what reaches the stream.

Views hand rich `Text` and `printable` strings, so names are already escaped where they are put in a
table. This console is the net under that: markup and emoji codes are off (a tensor named `[/bold]` or
`:x:` is text), and before rich writes a batch of segments, any control character that is not one of
rich's own control codes is escaped, a line that would start with `::` gets its first colon escaped,
and `##[` is broken — whatever view produced the text. Output that is not a terminal loses the
trailing spaces rich pads lines with.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.segment import Segment

from normscope.report.escape import control_escaped

_LINE_START_COMMAND = re.compile(r"^(\s*):(?=:)")
_TRAILING_SPACES = re.compile(r" +$", re.MULTILINE)


def _guard_lines(text: str, line_blank: bool) -> tuple[str, bool]:
    """Escape the controls in one segment's text (keeping its line breaks and tabs) and break a
    workflow command at the start of any of its lines. `line_blank`: nothing but whitespace precedes
    this text on its line."""
    lines = text.split("\n")
    out = []
    for index, line in enumerate(lines):
        line = control_escaped(line, keep="\t").replace("##[", "\\x23#[")
        if index > 0 or line_blank:
            line = _LINE_START_COMMAND.sub(r"\1\\x3a", line)
        out.append(line)
        line_blank = (index > 0 or line_blank) and not line.strip()
    return "\n".join(out), line_blank


class SafeConsole(Console):
    """A rich Console with markup and emoji off whose output carries no foreign control character."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("markup", False)
        kwargs.setdefault("emoji", False)
        kwargs.setdefault("highlight", False)
        super().__init__(*args, **kwargs)

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:  # rich's one exit to the stream
        guarded: list[Segment] = []
        line_blank = True
        for segment in buffer:
            if segment.control:
                guarded.append(segment)
                continue
            text, line_blank = _guard_lines(segment.text, line_blank)
            guarded.append(Segment(text, segment.style, segment.control))
        text = super()._render_buffer(guarded)
        # rich pads every table cell to the page width; in a pipe or file that is only trailing spaces
        return text if self.is_terminal else _TRAILING_SPACES.sub("", text)


__all__ = ["SafeConsole"]
