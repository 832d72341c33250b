"""Canonical JSON, JSON checks that name the offending key, and time parsing.

Two canonical forms exist on purpose (they must match the reference byte for byte):
the idempotency key hashes ASCII-escaped JSON, while the hash chain and the actor
fingerprint hash UTF-8 JSON with ``ensure_ascii=False``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from .errors import InvalidTimeError, PayloadNotSerializable

__all__ = [
    "canonical_ascii",
    "canonical_utf8",
    "quote_ascii",
    "sha256_hex",
    "ensure_json",
    "utc_now_iso",
    "parse_iso",
    "epoch_ms",
    "dumps_checked",
    "new_id",
]



def _refuse(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _encoder(*, sort_keys: bool, ensure_ascii: bool) -> Callable[[Any], str]:
    """A compact JSON encoder, built once. ``json.dumps`` builds a new C encoder on every
    call, which costs as much as encoding a small record; the kernel encodes several per step."""
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


_dumps_ascii = _encoder(sort_keys=True, ensure_ascii=True)
_dumps_utf8 = _encoder(sort_keys=True, ensure_ascii=False)
_dumps_store = _encoder(sort_keys=False, ensure_ascii=False)


def canonical_ascii(value: Any) -> str:
    """Sorted keys, compact separators, non-ASCII escaped (idempotency keys)."""
    return _dumps_ascii(value)


def quote_ascii(text: str) -> str:
    """A JSON string literal with non-ASCII escaped (a piece of :func:`canonical_ascii`)."""
    return _quote_ascii(text)


_quote_ascii: Callable[[str], str] = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def canonical_utf8(value: Any) -> bytes:
    """Sorted keys, compact separators, UTF-8 (hash chain, actor fingerprints)."""
    return _dumps_utf8(value).encode("utf-8")


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


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


def utc_now_iso() -> str:
    """Current UTC time as ISO-8601 with a ``+00:00`` offset (what ``ctx.now_iso()`` gives).

    The same text as ``datetime.now(timezone.utc).isoformat()``, at a third of the cost:
    the date and time up to the second are formatted once per second. The kernel stamps
    several records per step, so this is on the hot path.
    """
    global _second_cache
    now = time.time()
    sec = int(now)
    micro = int((now - sec) * 1_000_000)
    cached_sec, prefix = _second_cache
    if cached_sec != sec:
        prefix = datetime.fromtimestamp(sec, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _second_cache = (sec, prefix)
    return f"{prefix}.{micro:06d}+00:00" if micro else f"{prefix}+00:00"


_second_cache: tuple[int, str] = (-1, "")


def new_id() -> str:
    """A random (version 4) UUID string; ~3x cheaper than ``str(uuid.uuid4())``, same format."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


# RFC 4122 variant bits: the first hex digit of the fourth group is one of 8, 9, a, b.
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


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
    except (TypeError, ValueError, RecursionError):
        ensure_json(value, where)
        raise


#: Keys whose values are credentials: kept out of ledger records (the run keeps them).
SECRET_KEY_PATTERN = re.compile(r"(api[_-]?key|apikey|password|passwd|secret|token|authorization|credential)",
                                re.IGNORECASE)
REDACTED = "***"


def redact_secrets(value: Any) -> Any:
    """``value`` with the value of every dict key that names a credential replaced by ``***``.

    Returns ``value`` itself when there is nothing to hide (no copy on the common path).
    """
    if isinstance(value, dict):
        out = None
        for k, v in value.items():
            if isinstance(k, str) and SECRET_KEY_PATTERN.search(k) and v is not None:
                new: Any = REDACTED
            else:
                new = redact_secrets(v)
            if new is not v:
                if out is None:
                    out = dict(value)
                out[k] = new
        return value if out is None else out
    if isinstance(value, list):
        items = [redact_secrets(v) for v in value]
        return value if all(a is b for a, b in zip(items, value)) else items
    return value
