"""The canonical JSON that gets hashed, and SHA-256.

Two canonical forms exist on purpose (they must match the reference byte for byte): the
idempotency key hashes ASCII-escaped JSON (:func:`canonical_ascii`), while the hash chain
and the actor fingerprint hash UTF-8 JSON with ``ensure_ascii=False`` (:func:`canonical_utf8`).
Both sort keys and use compact separators.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from ._json import compact_encoder

__all__ = ["canonical_ascii", "canonical_utf8", "quote_ascii", "sha256_hex"]

_dumps_ascii = compact_encoder(sort_keys=True, ensure_ascii=True)
_dumps_utf8 = compact_encoder(sort_keys=True, ensure_ascii=False)
_quote_ascii: Callable[[str], str] = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def canonical_ascii(value: Any) -> str:
    """Sorted keys, compact separators, non-ASCII escaped (idempotency keys)."""
    return _dumps_ascii(value)


def quote_ascii(text: str) -> str:
    """A JSON string literal with non-ASCII escaped (a piece of :func:`canonical_ascii`)."""
    return _quote_ascii(text)


def canonical_utf8(value: Any) -> bytes:
    """Sorted keys, compact separators, UTF-8 (hash chain, actor fingerprints)."""
    return _dumps_utf8(value).encode("utf-8")


def sha256_hex(data: bytes | str) -> str:
    """The SHA-256 of ``data`` (text is UTF-8 encoded) as 64 lowercase hex digits."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()
