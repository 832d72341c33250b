"""How values are kept in Redis: msgpack with size limits, the ledger record's array, and
errors that name the key.

Every stored value is decoded here, so a damaged one is reported the same way wherever it is
read: :class:`CorruptRecordError` naming the run, the key and the field or stream entry.
"""

from __future__ import annotations

from typing import Any

import msgpack

from runtime import RunState
from runtime._json import ensure_json
from runtime.errors import CorruptRecordError, StoreError

__all__ = ["DEFAULT_MAX_VALUE_BYTES", "ValueTooLarge", "encode", "decode", "decode_state", "pack_record",
           "decode_record"]

#: Largest value (a run state, a ledger record, an effect result, a snapshot, artifact
#: metadata or inline content) written or read, in bytes; ``RedisSettings.max_value_bytes``.
DEFAULT_MAX_VALUE_BYTES = 16 * 1024 * 1024

#: Field order of a stored ledger record, after the format tag; ``run_id`` is left out
#: (the stream's key names the run). Arrays instead of maps halve a record's size, which
#: matters most for the short ledgers of waiting runs.
RECORD_FIELDS = ("step_id", "node_id", "status", "effect", "result", "error", "started_at", "ended_at",
                 "actor_id", "session_id", "attempt", "idempotency_key", "prev_hash", "record_hash", "signature")
#: Format tag of a stored record (the first array item), so the format can change later.
RECORD_FORMAT = 1


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


def decode_state(raw: bytes, *, key: str, run_id: str, limit: int) -> RunState:
    """The run state kept in field ``s`` of the run hash ``key``."""
    data = decode(raw, key=f"{key} field s", run_id=run_id, limit=limit)
    try:
        return RunState.from_dict(data)
    except Exception as exc:
        raise CorruptRecordError(location=f"Redis key {key} field s (run {run_id})", run_id=run_id,
                                 reason=str(exc)) from None


def pack_record(data: dict[str, Any]) -> list[Any]:
    """The array a ledger record (``StepRecord.to_dict()``) is kept as, before msgpack."""
    return [RECORD_FORMAT, *(data[f] for f in RECORD_FIELDS)]


def decode_record(fields: dict[bytes, bytes], *, key: str, entry_id: bytes, run_id: str, limit: int
                  ) -> dict[str, Any]:
    """The record (``StepRecord.to_dict()`` shape) of one entry of a run's ledger stream."""
    where = f"{key} entry {entry_id.decode()}"
    raw = fields.get(b"r")
    if raw is None:
        raise CorruptRecordError(location=f"Redis key {where}", run_id=run_id, reason="no field r")
    value = decode(raw, key=where, run_id=run_id, limit=limit)
    if isinstance(value, list) and value and value[0] == RECORD_FORMAT and len(value) == len(RECORD_FIELDS) + 1:
        return {"run_id": run_id, **dict(zip(RECORD_FIELDS, value[1:]))}
    raise CorruptRecordError(location=f"Redis key {where}", run_id=run_id,
                             reason=f"not a ledger record of format {RECORD_FORMAT}")
