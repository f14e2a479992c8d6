"""The documentation holds together: every link resolves, every cited section of docs/science.md exists,
the README stays short and names the test command CI runs, and no text speaks about its own writing.

The code's citations are read from the normscope that is imported (the installed package when the tests
run against a wheel), the documents from this test's checkout or copy.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

import normscope

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
SCIENCE = DOCS / "science.md"
PACKAGE = Path(normscope.__file__).resolve().parent

MARKDOWN = sorted([README, ROOT / "sample_runs" / "README.md", *DOCS.rglob("*.md")])
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# `docs/science.md §3`, `science.md §2–§5`, `[science.md](science.md) §1, §3 and §6`
CITATION = re.compile(
    r"science\.md(?:\]\([^)]*\))?`?((?:\s*(?:,|and|–|-|to)?\s*§\d+(?:\.\d+)*)+)")
SECTION = re.compile(r"§(\d+(?:\.\d+)*)")


def _without_code_blocks(text: str) -> str:
    """Fenced code is output and code, not links (keep the line count for messages)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            out.append("")
            continue
        out.append("" if fenced else line)
    return "\n".join(out)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays
    text = text.replace("`", "").lower().strip()
    kept = [c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM"]
    return "".join(kept).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    for line in _without_code_blocks(path.read_text(encoding="utf-8")).splitlines():
        match = HEADING.match(line)
        if match:
            slug, n = _slug(match.group(2)), 1
            unique = slug
            while unique in anchors:  # GitHub numbers repeated headings
                unique, n = f"{slug}-{n}", n + 1
            anchors.add(unique)
    return anchors


def _links(path: Path) -> list[tuple[int, str]]:
    text = _without_code_blocks(path.read_text(encoding="utf-8"))
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        found += [(number, m.group(1)) for m in LINK.finditer(re.sub(r"`[^`]*`", "", line))]
    return found


def _science_sections() -> set[str]:
    sections = set()
    for line in _without_code_blocks(SCIENCE.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"^#{2,4}\s+(\d+(?:\.\d+)*)\.?\s", line)
        if match:
            sections.add(match.group(1))
    return sections


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(path):
    broken = []
    for number, target in _links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: — not checked offline
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{path.name}:{number}: {target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{path.name}:{number}: {target} (no heading '#{anchor}')")
    assert not broken, "\n".join(broken)


def test_the_readme_links_every_document_in_docs():
    linked = {(README.parent / target.partition("#")[0]).resolve() for _, target in _links(README)}
    unlinked = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not unlinked, f"README.md does not link {unlinked}"


def _cited_sections(path: Path) -> list[tuple[int, str]]:
    cited = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        for match in CITATION.finditer(line):
            cited += [(number, s) for s in SECTION.findall(match.group(1))]
    return cited


def _citing_files() -> list[Path]:
    return [*sorted(PACKAGE.rglob("*.py")), *MARKDOWN]


def test_every_cited_section_of_the_science_exists():
    sections = _science_sections()
    assert {"1", "2", "3", "4", "5", "6"} <= sections
    missing, cited = [], 0
    for path in _citing_files():
        for number, section in _cited_sections(path):
            cited += 1
            if section not in sections:
                missing.append(f"{path}:{number}: §{section}")
    assert cited >= 10, "the code cites docs/science.md; the pattern above stopped finding them"
    assert not missing, "\n".join(missing)


def test_the_citation_pattern_reads_every_form_in_use(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("(docs/science.md §3–§4)\n`docs/science.md` §2.4\n"
                      "[science.md §1](science.md#x), §3 and §6\n")
    assert [s for _, s in _cited_sections(sample)] == ["3", "4", "2.4", "1"]


def test_nothing_cites_the_science_notes_that_do_not_ship():
    stale = [f"{p}:{n}" for p in _citing_files()
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if "SCIENCE.md" in line]
    assert not stale, stale


def test_the_readme_is_short_and_names_the_command_ci_runs():
    text = README.read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) <= 15_000
    test_command = "python3 -m pytest -q -n auto"
    assert test_command in text
    ci = ROOT / ".ci" / "run"
    if ci.exists():  # a copy of the tests outside the checkout has no .ci/
        assert any(line.strip() == test_command for line in ci.read_text().splitlines())


# What a document says about how it was written, not about normscope.
DEVELOPMENT_LOG = re.compile(
    r"this round|rounds ago|the round (?:before|after)|this session|this task|one sitting|"
    r"sittings|was lent|is lent|PYTHONDONTWRITEBYTECODE|\d\d:\d\d(?:–\d\d:\d\d)? UTC|the lead\b",
    re.IGNORECASE)


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_documents_speak_to_users(path):
    hits = [f"{path.name}:{n}: {line.strip()}"
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if DEVELOPMENT_LOG.search(line)]
    assert not hits, "\n".join(hits)


def test_the_readme_lists_every_exit_code():
    from normscope import errors

    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Exit codes"):]
    section = section[: section.index("\n## ", 1)]
    listed = {int(code) for code in re.findall(r"^\| (\d+) \|", section, re.MULTILINE)}
    defined = {errors.EXIT_OK, errors.EXIT_VIOLATIONS, errors.EXIT_BAD_INPUT, errors.EXIT_INTERNAL}
    assert listed == defined | {130}  # 130: Ctrl-C, the shell's convention (cli/_common.py)
