"""The house rules a reader relies on: no import cycle, and modules small enough to read.

Both checks read the source with ``ast`` (nothing is imported), like ``tests/test_imports.py``
checks the direction of imports.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "stores", "workers")

#: Longest module, in lines, unless its docstring says why it is one concept ("one concept").
MAX_LINES = 400


# -- the import graph ----------------------------------------------------------------------


def module_files(root: Path = REPO, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``packages`` (a package is its __init__)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: not in functions, not under TYPE_CHECKING."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _top_level_imports(node.body)
            yield from _top_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _top_level_imports(block)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from _top_level_imports(node.body)
        # FunctionDef / AsyncFunctionDef: imported when called, which cannot make a cycle at import.


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules its top-level imports need.

    Importing ``a.b.c`` runs ``a.b.c`` and the ``__init__`` of ``a`` and ``a.b``, except
    those the importer is inside (they are already being imported). ``from a import n``
    needs ``a.n`` when that is a module, else ``a`` itself, even from inside ``a``: the name
    must already be bound by ``a``'s ``__init__``.
    """
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        running = set(_ancestors(name))

        def runs(target: str, running: set[str] = running) -> set[str]:
            return {m for m in (*_ancestors(target), target) if m in modules and m not in running}

        targets: set[str] = set()
        for node in _top_level_imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    targets |= runs(alias.name)
                continue
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            if module not in modules:
                continue  # the stdlib or a third-party package
            targets |= runs(module)
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                targets |= runs(sub) if sub in modules else {module}
        targets.discard(name)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_project_has_no_import_cycle():
    # Given the modules of runtime/, stores/ and workers/ and what each imports at its top level,
    # I expect no group of modules that import each other, directly or round a loop.
    graph = import_graph(module_files())
    assert len(graph) > 50, "the walk found too few modules to be looking at the project"
    assert cycles(graph) == [], "import cycles (a module of each group imports another at import time)"


def test_the_checker_sees_a_cycle_and_ignores_imports_inside_functions(tmp_path):
    # Given a package whose modules import each other, one at the top, one in a function
    # or under TYPE_CHECKING, I expect only the import that runs at import time to count.
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .a import A\n")
    (pkg / "a.py").write_text("from .b import B\nA = 1\n")
    (pkg / "b.py").write_text("B = 2\n\ndef late():\n    from .a import A\n    return A\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .d import D\n")
    (pkg / "d.py").write_text("from pkg import c\n")
    modules = module_files(tmp_path, ("pkg",))
    graph = import_graph(modules)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == set() and graph["pkg.c"] == set()
    assert graph["pkg.d"] == {"pkg.c"}
    assert cycles(graph) == []
    # If b imports a at its top, I expect the loop a -> b -> a to be reported.
    (pkg / "b.py").write_text("from . import a\nB = 2\n")
    assert cycles(import_graph(module_files(tmp_path, ("pkg",)))) == [["pkg.a", "pkg.b"]]


# -- module size -----------------------------------------------------------------------------


def _line_counts() -> dict[str, int]:
    return {str(path.relative_to(REPO)): len(path.read_text(encoding="utf-8").splitlines())
            for path in module_files().values()}


def _says_one_concept(path: Path) -> bool:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return "one concept" in " ".join(doc.split()).lower()


def test_no_module_is_over_the_limit_unless_it_says_why():
    # A module over MAX_LINES is either split by concept or says in its docstring why it is
    # "one concept" (a reader then knows the length is deliberate).
    too_long = sorted(f"{name} ({lines} lines)" for name, lines in _line_counts().items()
                      if lines > MAX_LINES and not _says_one_concept(REPO / name))
    assert too_long == [], f"split these modules by concept (under {MAX_LINES} lines), or say why they are one concept"
