"""msgpack encoding of stored values, with size limits and errors that name the key."""

from __future__ import annotations

from typing import Any

import msgpack

from runtime._json import ensure_json
from runtime.errors import CorruptRecordError, StoreError

__all__ = ["ValueTooLarge", "encode", "decode"]


class ValueTooLarge(StoreError, ValueError):
    """Raised when a value to store is larger than the configured limit; nothing is written."""

    def __init__(self, *, what: str, size: int, limit: int) -> None:
        self.what, self.size, self.limit = what, size, limit
        super().__init__(f"{what} is {size} bytes encoded, over the limit of {limit} bytes (max_value_bytes)")


def _refuse(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def encode(value: Any, *, what: str, limit: int) -> bytes:
    """msgpack bytes of a JSON-shaped value; errors name ``what`` and the bad key."""
    try:
        data: bytes = msgpack.packb(value, use_bin_type=True, default=_refuse)
    except (TypeError, ValueError, OverflowError):
        ensure_json(value, what)
        raise
    if len(data) > limit:
        raise ValueTooLarge(what=what, size=len(data), limit=limit)
    return data


def decode(data: bytes, *, key: str, run_id: str | None, limit: int) -> Any:
    """The value stored in ``key``; :class:`CorruptRecordError` naming the run and key if unreadable."""
    if len(data) > limit:
        raise CorruptRecordError(location=f"Redis key {key}", run_id=run_id,
                                 reason=f"{len(data)} bytes, over the limit of {limit}")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        where = f"Redis key {key}" + (f" (run {run_id})" if run_id else "")
        raise CorruptRecordError(location=where, run_id=run_id,
                                 reason=f"not valid msgpack ({type(exc).__name__}: {exc})") from None
