"""Typed answers: a small, documented subset of JSON Schema that a question's answer must match.

A node that asks a person something may give its ``ask_user`` effect a ``schema``; the schema
is checked when the wait opens (:func:`check_schema`: a keyword outside the subset, or a bad
value, is refused naming it and where it is), and every answer is checked against it before
anything is written (:func:`check_answer`): an answer that does not match raises
:class:`InvalidAnswer` naming the place and the problem, and the run is left as it was.

The subset (``docs/concepts.md`` lists it too):

* ``type``: ``string``, ``integer``, ``number``, ``boolean``, ``object``, ``array``, ``null``,
  or a list of them (``integer`` also takes a float with no fraction, as JSON Schema does);
* ``enum``: the answer is one of these values (a non-empty list);
* strings: ``minLength``, ``maxLength``;
* numbers: ``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``;
* objects: ``properties`` (name -> schema), ``required`` (names), ``additionalProperties``
  (``true`` or ``false`` only);
* arrays: ``items`` (one schema for every item), ``minItems``, ``maxItems``;
* notes that change nothing: ``title``, ``description``, ``default`` (which must itself
  match the schema), ``examples``.

Standard library only (the kernel's rule): no ``jsonschema`` dependency, and no keyword
(``$ref``, ``pattern``, ``format``, ``oneOf``...) whose meaning we would only half keep.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ._json import json_type
from .errors import RunError, WorkflowError

__all__ = ["check_schema", "check_answer", "InvalidAnswerSchema", "InvalidAnswer", "KEYWORDS", "TYPES"]

#: The JSON types a ``type`` may name.
TYPES = ("string", "integer", "number", "boolean", "object", "array", "null")
#: Every keyword of the subset.
KEYWORDS = frozenset({
    "type", "enum", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
    "title", "description", "default", "examples",
})
#: How deep a schema may nest (objects in arrays in objects...).
MAX_DEPTH = 32


class InvalidAnswerSchema(WorkflowError, ValueError):
    """Raised when a question's schema leaves the supported subset or holds a bad value;
    ``keyword`` names it and ``path`` where it is (``properties.amount.minimum``)."""

    def __init__(self, path: str, keyword: str, problem: str) -> None:
        self.path, self.keyword, self.problem = path, keyword, problem
        where = f"{path}.{keyword}" if path else keyword
        super().__init__(f"answer schema: {where}: {problem}")


class InvalidAnswer(RunError, ValueError):
    """Raised when an answer does not match its question's schema; nothing was written.
    ``path`` is where (``answer.amount``), ``problem`` what is wrong."""

    def __init__(self, path: str, problem: str, *, run_id: str | None = None) -> None:
        self.path, self.problem, self.run_id = path, problem, run_id
        super().__init__(f"invalid answer{f' to run {run_id!r}' if run_id else ''}: {path}: {problem}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and not (isinstance(value, float) and not math.isfinite(value))


def _count(path: str, schema: Mapping[str, Any], keyword: str) -> None:
    if keyword not in schema:
        return
    value = schema[keyword]
    if not _is_int(value) or value < 0:
        raise InvalidAnswerSchema(path, keyword, f"must be a whole number of 0 or more, got {value!r}")


def check_schema(schema: Any, path: str = "", depth: int = 0) -> None:
    """Refuse a schema outside the subset (:class:`InvalidAnswerSchema`)."""
    if depth > MAX_DEPTH:
        raise InvalidAnswerSchema(path, "properties", f"nests deeper than {MAX_DEPTH} levels")
    if not isinstance(schema, Mapping):
        raise InvalidAnswerSchema(path, "(schema)", f"must be an object, got {type(schema).__name__}")
    for keyword in schema:
        if keyword not in KEYWORDS:
            raise InvalidAnswerSchema(path, str(keyword), "is not supported (supported: "
                                      + ", ".join(sorted(KEYWORDS)) + ")")
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not kinds or any(k not in TYPES for k in kinds):
            raise InvalidAnswerSchema(path, "type", f"must be one of {', '.join(TYPES)} or a list of them, "
                                      f"got {schema['type']!r}")
    if "enum" in schema and (not isinstance(schema["enum"], list) or not schema["enum"]):
        raise InvalidAnswerSchema(path, "enum", f"must be a non-empty list, got {schema['enum']!r}")
    for keyword in ("minLength", "maxLength", "minItems", "maxItems"):
        _count(path, schema, keyword)
    for keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if keyword in schema and not _is_number(schema[keyword]):
            raise InvalidAnswerSchema(path, keyword, f"must be a number, got {schema[keyword]!r}")
    if "properties" in schema:
        props = schema["properties"]
        if not isinstance(props, Mapping):
            raise InvalidAnswerSchema(path, "properties", "must be an object of name -> schema")
        for name, sub in props.items():
            check_schema(sub, f"{path}.properties.{name}" if path else f"properties.{name}", depth + 1)
    if "required" in schema:
        req = schema["required"]
        if not isinstance(req, list) or not all(isinstance(n, str) for n in req):
            raise InvalidAnswerSchema(path, "required", f"must be a list of names, got {req!r}")
    if "additionalProperties" in schema and not isinstance(schema["additionalProperties"], bool):
        raise InvalidAnswerSchema(path, "additionalProperties", "only true or false is supported")
    if "items" in schema:
        check_schema(schema["items"], f"{path}.items" if path else "items", depth + 1)
    if "default" in schema:
        try:
            check_answer(schema, schema["default"], "default")
        except InvalidAnswer as exc:
            raise InvalidAnswerSchema(path, "default", f"does not match the schema ({exc.path}: {exc.problem})") \
                from None


def _type_of(value: Any) -> str:
    return json_type(value) or type(value).__name__


def _has_type(value: Any, kind: str) -> bool:
    if kind == "integer":
        return _is_int(value) or (isinstance(value, float) and math.isfinite(value) and value.is_integer())
    if kind == "number":
        return _is_number(value)
    return _type_of(value) == kind


def check_answer(schema: Mapping[str, Any], value: Any, path: str = "answer") -> None:
    """Refuse an answer that does not match ``schema`` (:class:`InvalidAnswer`, the first problem)."""
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_has_type(value, k) for k in kinds):
            raise InvalidAnswer(path, f"must be {' or '.join(kinds)}, got {_type_of(value)} {value!r:.60}")
    if "enum" in schema and not any(value == choice and _type_of(value) == _type_of(choice)
                                    or (_is_number(value) and _is_number(choice) and value == choice)
                                    for choice in schema["enum"]):
        raise InvalidAnswer(path, f"must be one of {schema['enum']!r:.200}, got {value!r:.60}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            raise InvalidAnswer(path, f"must be at least {schema['minLength']} characters, got {len(value)}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise InvalidAnswer(path, f"must be at most {schema['maxLength']} characters, got {len(value)}")
    if _is_number(value):
        for keyword, says in (("minimum", "at least"), ("maximum", "at most"), ("exclusiveMinimum", "above"),
                              ("exclusiveMaximum", "below")):
            if keyword not in schema:
                continue
            bound = schema[keyword]
            ok = {"minimum": value >= bound, "maximum": value <= bound, "exclusiveMinimum": value > bound,
                  "exclusiveMaximum": value < bound}[keyword]
            if not ok:
                raise InvalidAnswer(path, f"must be {says} {bound}, got {value}")
    if isinstance(value, Mapping):
        props = schema.get("properties") or {}
        for name in schema.get("required") or ():
            if name not in value:
                raise InvalidAnswer(f"{path}.{name}", "is required")
        if schema.get("additionalProperties") is False:
            extra = sorted(str(k) for k in value if k not in props)
            if extra:
                raise InvalidAnswer(path, f"has fields the question does not ask for: {', '.join(extra)}")
        for name, sub in props.items():
            if name in value:
                check_answer(sub, value[name], f"{path}.{name}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            raise InvalidAnswer(path, f"must hold at least {schema['minItems']} items, got {len(value)}")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise InvalidAnswer(path, f"must hold at most {schema['maxItems']} items, got {len(value)}")
        if "items" in schema:
            for i, item in enumerate(value):
                check_answer(schema["items"], item, f"{path}[{i}]")
