"""Schedules in Redis (``workers/schedules.py`` defines them): one JSON string per schedule
(its spec and the state its fires move), the set of names, and the due index the sweep reads.

Every change of a schedule's state is a compare-and-set on its string (``WATCH``/``MULTI``):
a sweep that read a state another sweep has moved since writes nothing and reads again, so
however many beats run, a fire moves a schedule once.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from runtime.errors import AbstractRuntimeError

from .keys import Keys

__all__ = ["RedisSchedules", "ScheduleExists"]


class ScheduleExists(AbstractRuntimeError, ValueError):
    """``schedule add`` of a name that is taken (``--replace`` replaces it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"a schedule named {name!r} exists already (replace it with --replace, or delete it)")


class RedisSchedules:
    """Schedules' keys (a base class of :class:`~stores.redis.RedisBackend`)."""

    client: Any
    keys: Keys

    def save_schedule(self, name: str, entry: dict[str, Any], due_ms: int | None, *, replace: bool = False) -> None:
        """Write a new schedule (``ScheduleExists`` if the name is taken, unless ``replace``)."""
        k = self.keys
        raw = json.dumps(entry, sort_keys=True, separators=(",", ":"))
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(k.schedule(name))
                    if not replace and pipe.exists(k.schedule(name)):
                        pipe.unwatch()
                        raise ScheduleExists(name)
                    pipe.multi()
                    pipe.set(k.schedule(name), raw)
                    pipe.sadd(k.schedules(), name)
                    if due_ms is None:
                        pipe.zrem(k.schedules_due(), name)
                    else:
                        pipe.zadd(k.schedules_due(), {name: int(due_ms)})
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue

    def load_schedule(self, name: str) -> tuple[bytes, dict[str, Any]] | None:
        """The stored bytes (what a compare-and-set compares) and the entry, or None."""
        raw = self.client.get(self.keys.schedule(name))
        return (raw, json.loads(raw)) if raw is not None else None

    def swap_schedule(self, name: str, expected: bytes, entry: dict[str, Any], due_ms: int | None) -> bool:
        """Replace the schedule's entry if it is still ``expected``; False when another moved it."""
        k = self.keys
        raw = json.dumps(entry, sort_keys=True, separators=(",", ":"))
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(k.schedule(name))
                if pipe.get(k.schedule(name)) != expected:
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.set(k.schedule(name), raw)
                if due_ms is None:
                    pipe.zrem(k.schedules_due(), name)
                else:
                    pipe.zadd(k.schedules_due(), {name: int(due_ms)})
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def delete_schedule(self, name: str) -> bool:
        k = self.keys
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(k.schedule(name))
        pipe.srem(k.schedules(), name)
        pipe.zrem(k.schedules_due(), name)
        return bool(pipe.execute()[0])

    def schedule_names(self) -> list[str]:
        return sorted(m.decode() for m in self.client.smembers(self.keys.schedules()))

    def due_schedules(self, now_ms: int, limit: int) -> list[str]:
        """Names of the schedules whose next fire is due by ``now_ms`` (epoch ms, Redis clock)."""
        return [m.decode() for m in self.client.zrangebyscore(self.keys.schedules_due(), "-inf", now_ms,
                                                               start=0, num=int(limit))]
