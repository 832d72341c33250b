"""The tree drawn in ``runtime/errors.py`` is the real one: every error of the project, under its parent."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import runtime.errors
from runtime.errors import AbstractRuntimeError

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "stores", "workers")


def drawn_parents() -> dict[str, str]:
    """Class -> parent, read from the tree in the module docstring (by indentation)."""
    doc = runtime.errors.__doc__ or ""
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        m = re.match(r"^(\s*[│ ]*(?:[├└]── )?)([A-Z]\w+)", line)
        if m is None or not (line.strip() == "AbstractRuntimeError" or "── " in line):
            continue
        depth, name = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            parents[name] = stack[-1][1]
        stack.append((depth, name))
    return parents


def project_error_classes() -> dict[str, type[BaseException]]:
    """Every class of runtime/, stores/ and workers/ that subclasses AbstractRuntimeError.

    Found by reading the source (class names whose bases lead to the root), then imported from
    the modules that define them only, so that no module with side effects is imported.
    """
    defined: dict[str, tuple[str, list[str]]] = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef):
                    bases = [b.id if isinstance(b, ast.Name) else b.attr for b in node.bases
                             if isinstance(b, (ast.Name, ast.Attribute))]
                    defined[node.name] = (module, bases)
    errors = {"AbstractRuntimeError"}
    while True:
        more = {name for name, (_, bases) in defined.items() if errors & set(bases)} - errors
        if not more:
            break
        errors |= more
    return {name: getattr(importlib.import_module(defined[name][0]), name) for name in sorted(errors)}


def test_every_error_is_drawn_under_its_parent():
    parents = drawn_parents()
    classes = project_error_classes()
    assert len(classes) > 25
    for name, cls in classes.items():
        assert issubclass(cls, AbstractRuntimeError), name
        if cls is AbstractRuntimeError:
            continue
        parent = next(b for b in cls.__bases__ if issubclass(b, AbstractRuntimeError))
        assert parents.get(name) == parent.__name__, f"{name} is drawn under {parents.get(name)}, not {parent.__name__}"
    assert set(parents) == set(classes) - {"AbstractRuntimeError"}, "the drawing names a class that is not there"


def test_errors_that_subclass_a_builtin_still_catch_as_it():
    from runtime.integrations.abstractcore import LLMCallError
    from stores.redis.codec import ValueTooLarge
    from stores.signing import SigningError
    from workers.client import WaitTimeout

    assert issubclass(WaitTimeout, (runtime.errors.RunError)) and issubclass(WaitTimeout, TimeoutError)
    assert issubclass(ValueTooLarge, runtime.errors.StoreError) and issubclass(ValueTooLarge, ValueError)
    assert issubclass(SigningError, runtime.errors.StoreError) and issubclass(SigningError, ValueError)
    assert issubclass(LLMCallError, runtime.errors.EffectError)
