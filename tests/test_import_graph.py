"""The package's import graph, read from the source with `ast` (nothing is imported): no module imports
itself through others, every import inside a function says why it waits (`# lazy: <why>`), and the
layers of docs/development.md import one way.

Every import of a normscope module counts: at module level, under `if TYPE_CHECKING:`, inside
functions, relative ones, and `importlib.import_module("normscope....")` with a literal name.
`from normscope.x import y` is an edge to `normscope.x.y` when that is a module, else to `normscope.x`.
The files are those of the normscope that is imported (the installed package when the tests run
against a wheel).
"""

from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest

import normscope

PACKAGE = Path(normscope.__file__).resolve().parent
LAZY_MARK = "# lazy:"

# docs/development.md: sources → engine → trajectory table → analyses (and the check's rules on
# them) → reports → CLI. A module imports nothing from a later stage.
STAGES = (
    ("sources", ("normscope.sources",)),
    ("engine", ("normscope.engine",)),
    ("trajectory", ("normscope.trajectory",)),
    ("analysis", ("normscope.analysis", "normscope.check")),
    ("report", ("normscope.report",)),
    ("cli", ("normscope.cli", "normscope.__main__")),
)
# ...and the analyses, the check and the reports see a run only through the trajectory table.
TABLE_ONLY = ("analysis", "report")
NOT_SEEN_BY_TABLE_ONLY = ("sources", "engine")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the normscope module imported
    line: int  # first line of the import statement
    lazy: bool  # inside a function: runs when the function does, not when the module is imported


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


FILES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
MODULES = set(FILES)
# compiled modules (setup.py's extension): imported like submodules, importing nothing of normscope
EXTENSIONS = {"normscope.engine._fused"}


def _is_normscope(name: str) -> bool:
    return name == "normscope" or name.startswith("normscope.")


def _imports_of(module: str, tree: ast.Module) -> list[Import]:
    package = module if FILES[module].name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def add(target: str, node: ast.AST, lazy: bool) -> None:
        found.append(Import(module, target, node.lineno, lazy))

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if _is_normscope(alias.name):
                        add(alias.name, child, lazy)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[:len(base) - (child.level - 1)]
                    origin = ".".join(base + ([child.module] if child.module else []))
                else:
                    origin = child.module or ""
                if _is_normscope(origin):
                    for alias in child.names:
                        submodule = f"{origin}.{alias.name}"
                        add(submodule if submodule in MODULES | EXTENSIONS else origin, child, lazy)
            elif (isinstance(child, ast.Call) and isinstance(child.func, (ast.Attribute, ast.Name))
                  and (child.func.attr if isinstance(child.func, ast.Attribute) else child.func.id) == "import_module"
                  and child.args and isinstance(child.args[0], ast.Constant)
                  and isinstance(child.args[0].value, str) and _is_normscope(child.args[0].value)):
                add(child.args[0].value, child, lazy)
            visit(child, inner)

    visit(tree, False)
    return found


def _comments(source: str) -> dict[int, str]:
    """Each line's comment."""
    return {token.start[0]: token.string for token in tokenize.generate_tokens(io.StringIO(source).readline)
            if token.type == tokenize.COMMENT}


def _read(module: str) -> tuple[str, ast.Module]:
    source = FILES[module].read_text(encoding="utf-8")
    return source, ast.parse(source, filename=str(FILES[module]))


IMPORTS = {module: _imports_of(module, _read(module)[1]) for module in sorted(MODULES)}


def _where(item: Import) -> str:
    return f"{FILES[item.source].relative_to(PACKAGE.parent)}:{item.line}"


def _stage(module: str) -> int | None:
    for rank, (_, prefixes) in enumerate(STAGES):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def _cycles(edges: dict[str, set[str]]) -> list[tuple[list[str], set[str]]]:
    """Each group of modules that import each other (directly or through others), with one cycle
    through it (its modules in import order, the first repeated at the end); empty when the graph
    has no cycle."""
    nodes = sorted(set(edges) | {b for targets in edges.values() for b in targets})
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan's strongly connected components
        order[node] = low[node] = len(order)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in order:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], order[nxt])
        if low[node] == order[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in nodes:
        if node not in order:
            connect(node)
    return sorted(((_shortest_cycle(edges, group, min(group)), group) for group in groups), key=lambda c: c[0])


def _shortest_cycle(edges: dict[str, set[str]], group: set[str], start: str) -> list[str]:
    """The shortest path from `start` back to itself inside `group` (breadth first)."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(edges.get(node, ())):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if nxt in group and nxt not in came_from:
                    came_from[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{start} is in no cycle of its group")


def _module_ids(modules) -> list[str]:
    return [str(FILES[m].relative_to(PACKAGE.parent)) for m in modules]


def test_the_graph_reader_sees_every_kind_of_import():
    module = "normscope.sources.torch_files"  # relative imports at top level and in functions
    assert module in MODULES
    tree = ast.parse(
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "from . import _keys\n"
        "from ._files import files_in\n"
        "from .. import errors\n"
        "import normscope.engine.plan as plan\n"
        "if TYPE_CHECKING:\n"
        "    from normscope.trajectory import Trajectory\n"
        "def f():\n"
        "    from normscope.report import escape  # lazy: why\n"
        "    importlib.import_module('normscope.api')\n"
    )
    found = {(i.target, i.lazy) for i in _imports_of(module, tree)}
    assert found == {("normscope.sources._keys", False), ("normscope.sources._files", False),
                     ("normscope.errors", False), ("normscope.engine.plan", False),
                     ("normscope.trajectory", False), ("normscope.report.escape", True),
                     ("normscope.api", True)}
    assert _cycles({"a": {"b"}, "b": {"c", "d"}, "c": {"a"}, "d": {"e"}, "e": {"d"}}) == \
        [(["a", "b", "c", "a"], {"a", "b", "c"}), (["d", "e", "d"], {"d", "e"})]
    assert _cycles({"a": {"b"}, "b": {"c"}, "d": {"a"}}) == []


def test_every_import_of_a_normscope_module_names_one_that_exists():
    missing = [f"{_where(i)} imports {i.target}" for found in IMPORTS.values() for i in found
               if i.target not in MODULES | EXTENSIONS]
    assert not missing, "\n".join(missing)


def test_no_module_imports_itself_through_others():
    edges: dict[str, set[str]] = {}
    for found in IMPORTS.values():
        for item in found:
            if item.target != item.source:
                edges.setdefault(item.source, set()).add(item.target)
    shown = []
    for cycle, group in _cycles(edges):
        shown.append(f"import cycle among {len(group)} modules ({', '.join(sorted(group))}), e.g.:")
        for a, b in zip(cycle, cycle[1:]):
            at = min((i for i in IMPORTS[a] if i.target == b), key=lambda i: i.line)
            shown.append(f"  {a} → {b}  ({_where(at)}{', in a function' if at.lazy else ''})")
    assert not shown, "\n".join(shown)


def _unmarked(source: str) -> list[ast.stmt]:
    """The imports inside functions of `source` with no `# lazy:` comment on their first line or on
    the line above them or above the block of imports they stand in (unless that comment belongs to
    an import of its own)."""
    tree = ast.parse(source)
    comments = _comments(source)
    import_lines = {n for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                    for n in range(node.lineno, node.end_lineno + 1)}
    found: dict[int, ast.stmt] = {}  # by line: a function inside a function is walked twice
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for inner in ast.walk(node):
            if not isinstance(inner, (ast.Import, ast.ImportFrom)):
                continue
            line = inner.lineno
            above = line - 1
            while above in import_lines and LAZY_MARK not in comments.get(above, ""):
                above -= 1  # one comment above a block of imports marks the block
            marked = LAZY_MARK in comments.get(line, "") or (
                above not in import_lines and LAZY_MARK in comments.get(above, ""))
            if not marked:
                found[line] = inner
    return [found[line] for line in sorted(found)]


def test_the_lazy_mark_is_read_where_it_belongs():
    source = (
        "import os  # lazy: at top level no mark is needed, and this one marks nothing\n"
        "def f():\n"
        "    import a  # lazy: on the line\n"
        "    import b\n"  # the comment above is a's
        "    # lazy: on the line above\n"
        "    from c import (\n"
        "        d,\n"
        "    )\n"
        "    try:  # lazy: above, on a line with code\n"
        "        import e\n"
        "    except ImportError:\n"
        "        pass\n"
        "    def g():\n"
        "        import h\n"
        "    from i import (  # lazy: on the first line\n"
        "        j)\n"
        "    from k import (\n"
        "        m)  # lazy: on the last line only\n"
        "    # lazy: above a block\n"
        "    import n\n"
        "    from o import (\n"
        "        p)\n"
        "    import q\n"
    )
    assert [node.lineno for node in _unmarked(source)] == [4, 14, 17]


@pytest.mark.parametrize("module", sorted(MODULES), ids=_module_ids(sorted(MODULES)))
def test_every_import_inside_a_function_says_why_it_waits(module):
    where = FILES[module].relative_to(PACKAGE.parent)
    unmarked = [f"{where}:{node.lineno}: {ast.unparse(node)}" for node in _unmarked(_read(module)[0])]
    assert not unmarked, (f"imports inside a function without a `{LAZY_MARK} <why>` comment (move them to the "
                          "top of the module unless start-up time or an optional dependency needs them "
                          "late):\n" + "\n".join(unmarked))


STAGED = sorted(m for m in MODULES if _stage(m) is not None)


@pytest.mark.parametrize("module", STAGED, ids=_module_ids(STAGED))
def test_layers_import_one_way(module):
    rank = _stage(module)
    name = STAGES[rank][0]
    wrong = []
    for item in IMPORTS[module]:
        target = _stage(item.target)
        if target is None:
            continue
        target_name = STAGES[target][0]
        if target > rank:
            wrong.append(f"{_where(item)}: {name} imports {item.target}, of the later stage {target_name}")
        elif name in TABLE_ONLY and target_name in NOT_SEEN_BY_TABLE_ONLY:
            wrong.append(f"{_where(item)}: {name} imports {item.target} ({target_name}); it sees a run "
                         "only through the trajectory table")
    assert not wrong, "\n".join(dict.fromkeys(wrong))


def test_every_module_can_be_the_first_one_imported():
    """The graph above counts what a module names; this imports each module first, in one process
    with every normscope module forgotten before each: a module that imports a package whose
    `__init__` imports it back half-made fails here (ImportError, "partially initialized module")."""
    import importlib
    import sys
    import warnings

    def forget() -> None:
        for name in [n for n in sys.modules if _is_normscope(n)]:
            del sys.modules[name]

    saved = {n: m for n, m in sys.modules.items() if _is_normscope(n)}
    failed = []
    try:
        for module in sorted(MODULES - {"normscope.__main__"}):  # __main__ runs the CLI
            forget()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)  # normscope.schedules, the old name
                    importlib.import_module(module)
            except ImportError as exc:
                if exc.name and not _is_normscope(exc.name):
                    continue  # an optional dependency (dask, tensorboard, ...) that is not installed
                failed.append(f"{module}: {exc}")
    finally:
        forget()
        sys.modules.update(saved)
    assert not failed, "\n".join(failed)
