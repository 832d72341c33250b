"""Schedules: start a workflow's run at the times of a cron expression, once per time, however
many beats run (``docs/schedules.md``).

A :class:`Schedule` is what a user sets (``abstractruntime schedule add``); the state that
moves with its fires (next fire, last fire and run, a buffered fire) is kept beside it in
Redis (``stores/redis/schedules.py``). Every sweep (each beat sends one per period) fires the
due schedules (``workers/engine/schedules.py``): the run of a fire has an id made of the
schedule's name and the fire's time (:func:`run_id_for`), so the start is idempotent, and the
schedule moves to its next fire by a compare-and-set: two beats never start a fire twice.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from runtime._json import ensure_json
from runtime.errors import AbstractRuntimeError, WorkflowError

__all__ = ["Schedule", "InvalidSchedule", "UnknownSchedule", "OVERLAPS", "run_id_for", "fire_times", "next_fire_ms",
           "jitter_ms", "MAX_BACKFILL"]

#: What a fire does while the schedule's previous run is still active.
OVERLAPS = ("skip", "buffer_one", "allow_all", "cancel_other")
#: The most fires one backfill starts.
MAX_BACKFILL = 10_000

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class InvalidSchedule(WorkflowError, ValueError):
    """A schedule refused when it is set, naming the field (``cron``, ``timezone``...)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field, self.problem = field, problem
        super().__init__(f"schedule: {field}: {problem}")


class UnknownSchedule(AbstractRuntimeError, KeyError):
    """No schedule of that name."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no schedule named {name!r} (abstractruntime schedule list shows them)")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def _cron(expr: str) -> tuple[str, bool]:
    """The expression and whether its first of six fields is the second."""
    from croniter import croniter

    if not isinstance(expr, str) or not expr.strip():
        raise InvalidSchedule("cron", "a cron expression: 5 fields (minute hour day month weekday) or 6 with "
                                      "the second first ('*/2 * * * * *': every 2 s)")
    fields = expr.split()
    if len(fields) not in (5, 6):
        raise InvalidSchedule("cron", f"{expr!r} has {len(fields)} fields; 5 (minute first) or 6 (second first)")
    seconds = len(fields) == 6
    if not croniter.is_valid(expr, second_at_beginning=seconds):
        raise InvalidSchedule("cron", f"{expr!r} is not a valid cron expression")
    return " ".join(fields), seconds


@dataclass(frozen=True)
class Schedule:
    """Start ``workflow_id`` with ``vars`` at each time of ``cron`` in ``timezone``.

    ``overlap``: what a fire does while the previous run is active: ``skip`` it (the default),
    keep one for when it ends (``buffer_one``), start anyway (``allow_all``), or cancel the
    active one first (``cancel_other``). ``catchup_s``: how old a missed fire may be and still
    start when the sweep finds it (beats were down); older ones are skipped. ``jitter_s``:
    each fire is due up to this much after its time (the same delay for a given fire on every
    beat); the run id still names the fire's time.
    """

    name: str
    cron: str
    workflow_id: str
    timezone: str = "UTC"
    vars: dict[str, Any] = field(default_factory=dict)
    overlap: str = "skip"
    catchup_s: float = 60.0
    jitter_s: float = 0.0
    paused: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise InvalidSchedule("name", f"{self.name!r}: 1-64 letters, digits or . _ -")
        object.__setattr__(self, "cron", _cron(self.cron)[0])
        if not isinstance(self.workflow_id, str) or not self.workflow_id:
            raise InvalidSchedule("workflow_id", "the workflow each fire starts")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise InvalidSchedule("timezone", f"{self.timezone!r} is not a known time zone (an IANA name such "
                                              "as 'UTC' or 'Europe/Paris')") from None
        if not isinstance(self.vars, dict):
            raise InvalidSchedule("vars", "a JSON object")
        ensure_json(self.vars, "vars")
        if self.overlap not in OVERLAPS:
            raise InvalidSchedule("overlap", f"{self.overlap!r}: one of {', '.join(OVERLAPS)}")
        for name in ("catchup_s", "jitter_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 10**7:
                raise InvalidSchedule(name, f"{value!r}: seconds, 0 or more")
        if not isinstance(self.paused, bool):
            raise InvalidSchedule("paused", "true or false")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schedule:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def times(self, after_ms: int) -> Iterator[int]:
        """Fire times (epoch ms) strictly after ``after_ms``, in order."""
        return fire_times(self.cron, self.timezone, after_ms)


def fire_times(cron: str, tz: str, after_ms: int) -> Iterator[int]:
    from croniter import croniter

    expr, seconds = _cron(cron)
    start = datetime.fromtimestamp(after_ms / 1000, tz=ZoneInfo(tz))
    it = croniter(expr, start, second_at_beginning=seconds)
    while True:
        yield int(it.get_next(datetime).timestamp() * 1000)


def next_fire_ms(schedule: Schedule, after_ms: int) -> int:
    """The first fire time of ``schedule`` after ``after_ms``."""
    return next(schedule.times(after_ms))


def jitter_ms(schedule: Schedule, fire_ms: int) -> int:
    """How long after its time the fire at ``fire_ms`` is due: the same on every beat."""
    if schedule.jitter_s <= 0:
        return 0
    digest = hashlib.sha256(f"{schedule.name} {fire_ms}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % int(schedule.jitter_s * 1000 + 1)


def run_id_for(name: str, fire_ms: int, *, trigger: bool = False) -> str:
    """The run id of the fire of schedule ``name`` at ``fire_ms``: ``schedule:<name>:<UTC time>``
    (``...:trigger`` for one started by hand)."""
    at = datetime.fromtimestamp(fire_ms / 1000, tz=timezone.utc)
    stamp = at.strftime("%Y%m%dT%H%M%S") + (f".{fire_ms % 1000:03d}" if fire_ms % 1000 else "") + "Z"
    return f"schedule:{name}:{stamp}" + (":trigger" if trigger else "")
