"""OpenAI tool schemas from Python functions, as JSON that an ``LLM_CALL`` payload can carry.

An effect's payload must be JSON, so a workflow cannot hand the LLM client a function; it
hands it this schema. AbstractCore builds its own from a function
(``ToolDefinition.from_function``), but knows only str/int/float/bool/list/dict: any other
annotation (``Literal``, an ``Enum``, a ``TypedDict``, a dataclass) becomes ``"string"``,
``Optional[T]`` loses its ``null``, and parameters get no description. Here annotations are
resolved first (``from __future__ import annotations`` turns them into text) and mapped as
the table in ``docs/abstractcore.md`` shows; the docstring gives the tool's description and
each parameter's. No ``abstractcore`` import: a schema is plain data.
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import datetime
import decimal
import enum
import functools
import inspect
import json
import pathlib
import types
import typing
import uuid
from collections.abc import Mapping
from typing import Any, Union

from ..._json import json_type
from ._docstring import parse_docstring

__all__ = ["tool_schema", "type_schema"]

_NONE = type(None)
#: Types that map to one JSON type.
_SCALARS: dict[Any, dict[str, Any]] = {
    str: {"type": "string"}, int: {"type": "integer"}, float: {"type": "number"}, bool: {"type": "boolean"},
    _NONE: {"type": "null"}, bytes: {"type": "string"}, decimal.Decimal: {"type": "number"},
    datetime.datetime: {"type": "string", "format": "date-time"}, datetime.date: {"type": "string", "format": "date"},
    datetime.time: {"type": "string", "format": "time"}, uuid.UUID: {"type": "string", "format": "uuid"},
}
#: Containers that arrive as JSON arrays (``set`` ones say their items are unique).
_ARRAYS = {list, set, frozenset, cabc.Sequence, cabc.MutableSequence, cabc.Iterable, cabc.Collection, cabc.Set,
           cabc.MutableSet}
_OBJECTS = {dict, cabc.Mapping, cabc.MutableMapping}
_UNIONS: set[Any] = {Union, getattr(types, "UnionType", Union)}
#: ``Required[T]`` / ``NotRequired[T]`` wrap TypedDict fields (Python 3.11+).
_FIELD_WRAPPERS = {w for w in (getattr(typing, "Required", None), getattr(typing, "NotRequired", None)) if w}
#: Annotation text understood when the name cannot be resolved (AbstractCore reads these too).
_BUILTIN_NAMES: dict[str, Any] = {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict,
                                  "None": None, "Any": Any}
_NO_DEFAULT = object()


def tool_schema(tool: Any) -> dict[str, Any]:
    """The OpenAI tool schema (``{"type": "function", "function": {...}}``) of ``tool``.

    ``tool`` is a schema dict (kept as is; a bare ``{"name", "parameters"}`` is wrapped), a
    function or any callable, a function decorated with AbstractCore's ``@tool`` (its name and
    description win), or an AbstractCore ``ToolDefinition``.
    """
    if isinstance(tool, Mapping):
        return dict(tool) if "type" in tool else {"type": "function", "function": dict(tool)}
    definition = getattr(tool, "_tool_definition", None)
    if definition is None and not callable(tool) and callable(getattr(tool, "function", None)):
        definition, tool = tool, tool.function  # an AbstractCore ToolDefinition
    summary, described = parse_docstring(getattr(tool, "__doc__", None) if _has_own_doc(tool) else None)
    name = getattr(definition, "name", None) or getattr(tool, "__name__", None) or type(tool).__name__
    description = getattr(definition, "description", None) or summary
    properties: dict[str, Any] = {}
    required: list[str] = []
    try:
        signature = inspect.signature(tool)
    except (TypeError, ValueError):  # a builtin without a signature: no parameters to describe
        signature = inspect.Signature()
    hints = _hints(tool)
    for p in signature.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        annotation = hints.get(p.name, p.annotation)
        if annotation is p.empty and type(p.default) in _SCALARS and p.default is not None:
            annotation = type(p.default)  # unannotated ``retries=3``: an integer, not any value
        schema = type_schema(annotation)
        if p.name in described and "description" not in schema:
            schema["description"] = described[p.name]
        default = _json_default(p.default)
        if p.default is p.empty:
            required.append(p.name)
        elif default is not _NO_DEFAULT:
            schema["default"] = default
        properties[p.name] = schema
    return {"type": "function", "function": {"name": name, "description": description,
                                             "parameters": {"type": "object", "properties": properties,
                                                            "required": required}}}


def type_schema(annotation: Any) -> dict[str, Any]:
    """The JSON Schema of one resolved annotation (``{}`` for ``Any`` or none: any value)."""
    return _schema(annotation, ())


def _has_own_doc(tool: Any) -> bool:
    """A callable object's docstring is its class's; a plain ``object``'s says nothing of the tool."""
    doc = getattr(tool, "__doc__", None)
    return bool(doc) and doc is not getattr(object, "__doc__", None)


def _hints(tool: Any) -> dict[str, Any]:
    """Resolved annotations; one name that cannot be resolved costs only its own parameter."""
    if inspect.isclass(tool):
        target = tool.__init__
    elif isinstance(tool, functools.partial):
        target = tool.func
    else:
        target = tool if inspect.isroutine(tool) else type(tool).__call__
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:  # NameError for a missing name, TypeError for objects without annotations
        pass
    raw = getattr(target, "__annotations__", None)
    if not isinstance(raw, Mapping):
        return {}
    namespace = getattr(inspect.unwrap(target), "__globals__", {})
    hints: dict[str, Any] = {}
    for key, annotation in raw.items():
        try:
            single = types.SimpleNamespace(__annotations__={key: annotation}, __globals__=namespace)
            hints[key] = typing.get_type_hints(single, include_extras=True)[key]
        except Exception:
            text = annotation.strip() if isinstance(annotation, str) else None
            hints[key] = _BUILTIN_NAMES.get(text, annotation) if text is not None else annotation
    return hints


def _schema(tp: Any, seen: tuple[Any, ...]) -> dict[str, Any]:
    if tp is Any or tp is inspect.Parameter.empty or isinstance(tp, typing.TypeVar):
        return {}
    if tp is None:
        tp = _NONE
    try:
        hash(tp)
    except TypeError:  # not an annotation at all (a list of types, say)
        return {"type": "string"}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        base = _schema(args[0], seen)
        notes = [a for a in args[1:] if isinstance(a, str)]
        return {**base, "description": " ".join(notes)} if notes else base
    if origin in _FIELD_WRAPPERS:
        return _schema(args[0], seen)
    if isinstance(tp, type) and tp in _SCALARS:
        return dict(_SCALARS[tp])
    if origin is typing.Literal:
        return _enum([a.value if isinstance(a, enum.Enum) else a for a in args])
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum([member.value for member in tp])
    if origin in _UNIONS:
        options = [a for a in args if a is not _NONE]
        nullable = len(options) < len(args)
        if len(options) == 1:
            inner = _schema(options[0], seen)
            return _nullable(inner) if nullable else inner
        choices = [_schema(a, seen) for a in options]
        return {} if {} in choices else {"anyOf": choices + ([{"type": "null"}] if nullable else [])}
    if tp is tuple or origin is tuple:
        return _tuple(args, seen)
    if tp in _ARRAYS or origin in _ARRAYS:
        schema: dict[str, Any] = {"type": "array"}
        if args and (items := _schema(args[0], seen)):
            schema["items"] = items
        if {tp, origin} & {set, frozenset, cabc.Set, cabc.MutableSet}:
            schema["uniqueItems"] = True
        return schema
    if tp in _OBJECTS or origin in _OBJECTS:
        mapping: dict[str, Any] = {"type": "object"}
        if len(args) == 2 and (values := _schema(args[1], seen)):
            mapping["additionalProperties"] = values
        return mapping
    if isinstance(tp, type) and (typing.is_typeddict(tp) or dataclasses.is_dataclass(tp)):
        return {"type": "object"} if tp in seen else _record(tp, (*seen, tp))
    if isinstance(tp, typing.NewType):
        return _schema(tp.__supertype__, seen)
    if isinstance(tp, type) and issubclass(tp, pathlib.PurePath):
        return {"type": "string"}
    # Anything else (a class, an unresolved name): the tool gets the JSON value as is, and text is
    # what such a value can be built from. AbstractCore makes the same choice.
    return {"type": "string"}


def _enum(values: list[Any]) -> dict[str, Any]:
    kinds = {_json_type(v) for v in values}
    return {"type": kinds.pop(), "enum": values} if len(kinds) == 1 else {"enum": values}


def _json_type(value: Any) -> str:
    return json_type(value) or "object"


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or null: a second type where there is one type, else ``anyOf``."""
    if not schema:
        return schema  # any value already includes null
    kind = schema.get("type")
    if isinstance(kind, str):
        out = {**schema, "type": [kind, "null"]}
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        return out
    return {"anyOf": [schema, {"type": "null"}]}


def _tuple(args: tuple[Any, ...], seen: tuple[Any, ...]) -> dict[str, Any]:
    if not args:
        return {"type": "array"}
    if len(args) == 2 and args[1] is Ellipsis:
        items = _schema(args[0], seen)
        return {"type": "array", **({"items": items} if items else {})}
    return {"type": "array", "prefixItems": [_schema(a, seen) for a in args], "minItems": len(args),
            "maxItems": len(args)}


def _record(tp: type, seen: tuple[Any, ...]) -> dict[str, Any]:
    """A TypedDict or a dataclass: an object with its fields; descriptions from its docstring."""
    try:
        hints = typing.get_type_hints(tp, include_extras=True)
    except Exception:
        hints = dict(getattr(tp, "__annotations__", {}))
    _summary, described = parse_docstring(tp.__doc__ if _own_class_doc(tp) else None)
    properties: dict[str, Any] = {}
    required: list[str] = []
    if dataclasses.is_dataclass(tp):
        for f in dataclasses.fields(tp):
            if not f.init:
                continue
            properties[f.name] = _schema(hints.get(f.name, Any), seen)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.append(f.name)
            elif f.default is not dataclasses.MISSING and (value := _json_default(f.default)) is not _NO_DEFAULT:
                properties[f.name]["default"] = value
    else:
        keys: frozenset[str] = getattr(tp, "__required_keys__", frozenset(hints))
        for key, hint in hints.items():
            properties[key] = _schema(hint, seen)
            if key in keys:
                required.append(key)
    for key, text in described.items():
        if key in properties and "description" not in properties[key]:
            properties[key]["description"] = text
    return {"type": "object", "properties": properties, "required": required}


def _own_class_doc(tp: type) -> bool:
    """Dataclasses without a docstring get a generated one (their signature): not a description."""
    doc = tp.__doc__ or ""
    return bool(doc) and not (dataclasses.is_dataclass(tp) and doc.startswith(f"{tp.__name__}("))


def _json_default(value: Any) -> Any:
    """A default as JSON, or ``_NO_DEFAULT`` when it has none (the parameter is then optional
    but its default is not shown)."""
    if value is inspect.Parameter.empty:
        return _NO_DEFAULT
    if isinstance(value, enum.Enum):
        value = value.value
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        return _NO_DEFAULT

