"""Untrusted text made safe for each place normscope prints it.

Every name that comes from a run — tensor names, file and directory names, state-dict keys, fragments
of error messages — is text someone else chose. Printed as it is, a newline followed by
`::error title=…::` becomes a GitHub workflow command, an ESC sequence retitles or clears the
terminal, and `[/bold]` is rich markup. Each function here makes such text inert for one target:

- `printable`: terminals, logs and plain text. Control characters become visible escapes
  (`\\n`, `\\x1b`), and the two workflow-command markers GitHub's runner looks for (`::` at the start
  of a line, `##[` anywhere) are broken.
- `github_data` / `github_property`: the parts of a workflow command, escaped as the runner unescapes
  them (`%`, CR, LF; in properties also `:` and `,`).
- `csv_field`, `markdown_text`, `markdown_code`, `html_text`: one format each.
- `json_text`: JSON keeps names as data (the encoder escapes control characters); only `##[` is written
  as `##\\u005b`, which reads back as the same string.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from normscope.report.json_indent import indented

# C0 and C1 control characters, DEL, the Unicode line and paragraph separators, and the bidirectional
# overrides and isolates (which reorder what a terminal or browser shows).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

# The runner reads a line as a command when it starts with `::` after leading whitespace, and (the
# older syntax) when `##[` appears anywhere in it. Escaping a colon that another colon follows leaves
# no `::` at all, so no line break — ours, rich's wrapping, a table cell folding — can start a line
# with one.
_DOUBLE_COLON = re.compile(":(?=:)")
_LEGACY_COMMAND = "##["


def _escape_char(match: re.Match[str]) -> str:
    char = match.group(0)
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def control_escaped(text: object, keep: str = "") -> str:
    """`text` with every control character written as a visible escape (`\\n`, `\\x1b`, `\\u202e`),
    except those in `keep` (a multi-line block keeps its `\\n`)."""
    if not keep:
        return _UNPRINTABLE.sub(_escape_char, str(text))
    return _UNPRINTABLE.sub(lambda m: m.group(0) if m.group(0) in keep else _escape_char(m), str(text))


def no_workflow_commands(text: str) -> str:
    """`text` with the workflow-command markers broken: `::` → `\\x3a:`, `##[` → `\\x23#[`."""
    return _DOUBLE_COLON.sub("\\\\x3a", text).replace(_LEGACY_COMMAND, "\\x23#[")


def printable(text: object) -> str:
    """Untrusted text for a terminal, a log or a plain-text file: one line, nothing a terminal or a
    CI runner acts on."""
    return no_workflow_commands(control_escaped(text))


def github_data(text: object) -> str:
    """The message of a workflow command (after the second `::`). CR and LF are escaped as the runner
    reads them back (an annotation may have several lines); other controls become visible escapes."""
    text = control_escaped(text, keep="\r\n").replace(_LEGACY_COMMAND, "\\x23#[")
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def github_property(text: object) -> str:
    """A property value of a workflow command (`title=…`, `file=…`)."""
    return github_data(text).replace(":", "%3A").replace(",", "%2C")


# A spreadsheet runs a cell that starts with one of these as a formula.
_FORMULA_START = ("=", "+", "-", "@")


def csv_field(text: object) -> str:
    """A text field for CSV: printable (the csv module then quotes commas and quotes), and a leading
    formula character neutralised with a `'`, as spreadsheets expect."""
    value = printable(text)
    return "'" + value if value.startswith(_FORMULA_START) else value


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|&~#!{}])")


def markdown_text(text: object) -> str:
    """Untrusted text inside Markdown prose or a table cell: printable, with every character that
    Markdown or its inline HTML would act on backslash-escaped."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", printable(text))


def markdown_code(text: object) -> str:
    """Untrusted text as a Markdown code span that is safe in a table cell: the fence is longer than
    any run of backticks inside, and `|` is escaped (GitHub splits table cells before code spans)."""
    value = printable(text).replace("|", "\\|")
    longest = max((len(run) for run in re.findall("`+", value)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if value.startswith("`") or value.endswith("`") or not value.strip() else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def html_text(text: object) -> str:
    """Untrusted text for HTML element content or a quoted attribute."""
    return html.escape(printable(text), quote=True)


def plot_label(text: object) -> str:
    """Untrusted text for a matplotlib label or title: printable, with `$` escaped so that a name
    holding two of them is not parsed as mathtext (which fails on most such names)."""
    return printable(text).replace("$", "\\$")


def json_text(document: Any, *, indent: int | None = 2) -> str:
    """A JSON document as text (no NaN), with `##[` in strings written as `##\\u005b`. Indented, it is
    `json.dumps`'s text, written by `json_indent.indented`."""
    text = json.dumps(document, allow_nan=False) if indent is None else indented(document, indent)
    return text.replace(_LEGACY_COMMAND, "##\\u005b")


__all__ = ["control_escaped", "csv_field", "github_data", "github_property", "html_text", "json_text",
           "markdown_code", "markdown_text", "no_workflow_commands", "plot_label", "printable"]
