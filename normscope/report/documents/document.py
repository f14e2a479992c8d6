"""A renderer-neutral report document: sections of paragraphs, bullet lists, tables and figures.

`normscope.report.documents.build` fills it from a trajectory and the analyses; `html` and `markdown` render it
without computing anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: tuple[bool, ...] = ()  # right-align these columns
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    name: str  # file stem for the Markdown PNG, e.g. "norms"
    title: str
    png: bytes
    caption: str = ""


Block = Paragraph | Bullets | Table | Figure


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class Report:
    title: str
    subtitle: str
    sections: tuple[Section, ...] = field(default_factory=tuple)

    @property
    def figures(self) -> list[Figure]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]
