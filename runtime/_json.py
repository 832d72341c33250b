"""JSON: the compact encoders, and checks that name the key JSON cannot hold.

Values bound for a store are JSON (strings, numbers, booleans, None, str-keyed dicts and
lists). :func:`dumps_checked` encodes one; when it cannot, :func:`ensure_json` names the
first bad key. The canonical forms that get hashed live in :mod:`runtime._hashing`, built
on :func:`compact_encoder`; times are in :mod:`runtime._clock`, ids in :mod:`runtime._ids`
and the redaction of credentials in :mod:`runtime._redact`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from .errors import PayloadNotSerializable

__all__ = ["compact_encoder", "ensure_json", "dumps_checked", "json_type"]


def _refuse(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def compact_encoder(*, sort_keys: bool, ensure_ascii: bool) -> Callable[[Any], str]:
    """A compact JSON encoder (``,`` and ``:`` separators, no NaN), built once.

    ``json.dumps`` builds a new C encoder on every call, which costs as much as encoding a
    small record; the kernel encodes several per step.
    """
    c_make = getattr(json.encoder, "c_make_encoder", None)
    if c_make is None:  # not CPython's accelerator: the plain encoder gives the same text
        return json.JSONEncoder(sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=ensure_ascii,
                                allow_nan=False).encode
    quote = json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring
    # markers=None skips the cycle check: a cycle ends in RecursionError, reported as not JSON.
    encode = c_make(None, _refuse, quote, None, ":", ",", sort_keys, False, False)
    plain = json.JSONEncoder(sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=ensure_ascii,
                             allow_nan=False).encode

    def dumps(value: Any) -> str:
        if isinstance(value, str):  # the C encoder only takes containers at the top
            return plain(value)
        return "".join(encode(value, 0))

    return dumps


_dumps_store = compact_encoder(sort_keys=False, ensure_ascii=False)

_LEAVES = frozenset({str, int, bool})


def _find_bad_path(value: Any, path: str, depth: int = 0) -> tuple[str, str] | None:
    """Walk ``value`` and return (path, reason) of the first part JSON cannot hold."""
    if value is None or type(value) in _LEAVES:
        return None
    if depth > 500:
        return path, "nesting deeper than 500 levels"
    if isinstance(value, (str, bool, int)):  # subclasses, such as str enums
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, f"non-finite float {value!r}")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return f"{path}[{k!r}]", f"key of type {type(k).__name__} (keys must be str)"
            bad = _find_bad_path(v, f"{path}[{k!r}]", depth + 1)
            if bad:
                return bad
        return None
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            bad = _find_bad_path(v, f"{path}[{i}]", depth + 1)
            if bad:
                return bad
        return None
    return path, f"value of type {type(value).__name__}"


def ensure_json(value: Any, where: str) -> None:
    """Raise :class:`PayloadNotSerializable` naming the first key JSON cannot hold.

    Strings, numbers, booleans, None, str-keyed dicts and lists are accepted; a str
    Enum counts as a string. ``where`` names the root (``"vars"``, ``"payload"``).
    """
    bad = _find_bad_path(value, where)
    if bad is not None:
        raise PayloadNotSerializable(path=bad[0], reason=bad[1])


def dumps_checked(value: Any, where: str) -> str:
    """JSON text of ``value`` (UTF-8, compact); on failure, an error naming the bad key."""
    try:
        return _dumps_store(value)
    except (TypeError, ValueError, RecursionError):
        ensure_json(value, where)
        raise


def json_type(value: Any) -> str | None:
    """The JSON Schema type name of a decoded JSON value (``integer`` for a whole int, not for a
    bool), or None for a value JSON has no type for."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return None
