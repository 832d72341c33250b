"""Read a docstring into a summary and per-parameter descriptions (Google, NumPy and reST styles).

A tool schema is all an LLM knows about a tool, so the words a developer already wrote for
each parameter should reach it. Only what schemas need is read: the text before the first
section, and the entries of parameter sections (``Args:``, ``Parameters``, ``:param x:``).
"""

from __future__ import annotations

import inspect
import re

__all__ = ["parse_docstring"]

#: Google-style headers whose entries describe parameters (or, on a class, fields).
PARAM_HEADERS = {"args", "arguments", "parameters", "params", "keyword args", "keyword arguments", "kwargs",
                 "other parameters", "attributes", "fields", "keys"}
#: Other Google/NumPy headers: they end the summary and any parameter section.
OTHER_HEADERS = {"returns", "return", "yields", "yield", "raises", "raise", "example", "examples", "note", "notes",
                 "see also", "warning", "warnings", "todo", "references", "methods"}

_GOOGLE_HEADER = re.compile(r"^\s*([A-Za-z][A-Za-z ]*):\s*$")
_NUMPY_RULE = re.compile(r"^\s*-{3,}\s*$")
_REST_FIELD = re.compile(r"^\s*:(\w+)((?:\s+[^:]+?)?)\s*:\s*(.*)$")
_REST_PARAM_FIELDS = {"param", "parameter", "arg", "argument", "key", "keyword", "ivar", "cvar", "var"}
_GOOGLE_ENTRY = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_NUMPY_ENTRY = re.compile(r"^\*{0,2}(\w+)\s*(?::.*)?$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _join(parts: list[str]) -> str:
    return " ".join(p.strip() for p in parts if p.strip())


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """``(summary, {parameter: description})``; the summary keeps its paragraphs, each on one line."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    summary: list[str] = []
    params: dict[str, str] = {}
    in_summary = True
    i = 0
    while i < len(lines):
        line = lines[i]
        header = _header(lines, i)
        if header is not None:
            in_summary = False
            name, numpy = header
            i += 2 if numpy else 1
            if name in PARAM_HEADERS:
                i = _read_entries(lines, i, params, numpy=numpy, base=_indent(line))
            continue
        field = _REST_FIELD.match(line)
        if field:
            in_summary = False
            kind, words, text = field.group(1).lower(), field.group(2).split(), [field.group(3)]
            i += 1
            while i < len(lines) and lines[i].strip() and _indent(lines[i]) > _indent(line):
                text.append(lines[i])
                i += 1
            if kind in _REST_PARAM_FIELDS and words:
                params[words[-1].lstrip("*")] = _join(text)
            continue
        if in_summary:
            summary.append(line)
        i += 1
    paragraphs = " ".join(line.strip() if line.strip() else "\n\n" for line in summary).split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip()), params


def _header(lines: list[str], i: int) -> tuple[str, bool] | None:
    """The section header starting at line ``i``: (lower-case name, is NumPy style), or None."""
    line = lines[i]
    if i + 1 < len(lines) and _NUMPY_RULE.match(lines[i + 1]) and line.strip():
        name = line.strip().lower()
        if name in PARAM_HEADERS or name in OTHER_HEADERS:
            return name, True
    match = _GOOGLE_HEADER.match(line)
    if match and match.group(1).strip().lower() in PARAM_HEADERS | OTHER_HEADERS:
        return match.group(1).strip().lower(), False
    return None


def _read_entries(lines: list[str], i: int, params: dict[str, str], *, numpy: bool, base: int) -> int:
    """Read the entries of one parameter section into ``params``; return the index after it.

    Google entries are indented under their header (``city (str): The city.``); NumPy entries
    sit at the header's indent (``city : str``) with their text indented below.
    """
    entry_indent: int | None = None
    name: str | None = None
    text: list[str] = []
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        indent = _indent(line)
        if _header(lines, i) is not None or _REST_FIELD.match(line) or (not numpy and indent <= base):
            break
        if entry_indent is None:
            entry_indent = indent
        if indent < entry_indent:
            break
        if indent == entry_indent:
            if name:
                params[name] = _join(text)
            match = (_NUMPY_ENTRY if numpy else _GOOGLE_ENTRY).match(line.strip())
            name = match.group(1) if match else None
            text = [] if numpy or not match else [match.group(2)]
        else:
            text.append(line)
        i += 1
    if name:
        params[name] = _join(text)
    return i
