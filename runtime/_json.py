"""Canonical JSON, JSON checks that name the offending key, and time parsing.

Two canonical forms exist on purpose (they must match the reference byte for byte):
the idempotency key hashes ASCII-escaped JSON, while the hash chain and the actor
fingerprint hash UTF-8 JSON with ``ensure_ascii=False``.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from typing import Any

from .errors import InvalidTimeError, PayloadNotSerializable

__all__ = [
    "canonical_ascii",
    "canonical_utf8",
    "sha256_hex",
    "ensure_json",
    "utc_now_iso",
    "parse_iso",
    "epoch_ms",
    "dumps_checked",
]

_dumps_ascii = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode
_dumps_utf8 = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def canonical_ascii(value: Any) -> str:
    """Sorted keys, compact separators, non-ASCII escaped (idempotency keys)."""
    return _dumps_ascii(value)


def canonical_utf8(value: Any) -> bytes:
    """Sorted keys, compact separators, UTF-8 (hash chain, actor fingerprints)."""
    return _dumps_utf8(value).encode("utf-8")


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def _find_bad_path(value: Any, path: str, depth: int = 0) -> tuple[str, str] | None:
    """Walk ``value`` and return (path, reason) of the first part JSON cannot hold."""
    if depth > 500:
        return path, "nesting deeper than 500 levels"
    if value is None or isinstance(value, (str, bool, int)):
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


def utc_now_iso() -> str:
    """Current UTC time as ISO-8601 with a ``+00:00`` offset (what ``ctx.now_iso()`` gives)."""
    return datetime.now(timezone.utc).isoformat()


def parse_iso(value: Any, *, field: str = "until") -> datetime:
    """Parse an ISO-8601 time (decision D4): ``Z`` or an offset; a naive value is UTC."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidTimeError(field=field, value=value) from None
    else:
        raise InvalidTimeError(field=field, value=value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt


def epoch_ms(value: Any, *, field: str = "until") -> int:
    """Milliseconds since the epoch of an ISO time (the score of a timer index)."""
    return int(parse_iso(value, field=field).timestamp() * 1000)


def dumps_checked(value: Any, where: str) -> str:
    """JSON text of ``value`` (UTF-8, compact); on failure, an error naming the bad key."""
    try:
        return _dumps_store(value)
    except (TypeError, ValueError):
        ensure_json(value, where)
        raise


_dumps_store = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
