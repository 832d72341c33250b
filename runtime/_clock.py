"""The wall clock, and ISO-8601 times read as the kernel reads them (decision D4).

Every timestamp the kernel writes (``created_at``, ``updated_at``, a record's
``started_at`` / ``ended_at``) comes from :func:`utc_now_iso`; functions that stamp
accept a ``clock`` argument defaulting to it. Times are compared parsed, never as text.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from .errors import InvalidTimeError

__all__ = ["Clock", "utc_now_iso", "iso_ms", "parse_iso", "epoch_ms"]

#: A clock: no arguments, the current UTC time as ISO-8601 text (what :func:`utc_now_iso` gives).
Clock = Callable[[], str]


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


def iso_ms(ms: int) -> str:
    """An epoch-ms time as ISO 8601 UTC (``2026-12-01T00:00:01.500000+00:00``)."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat()


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
