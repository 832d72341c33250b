"""Fair dispatch's Redis side (issue 14, item 3): deferred work waits in one queue per fairness
key, and one dispatcher pass at a time serves the keys by weighted round robin.

* ``deferred:<key>`` (ZSET): the key's items, by priority (1 first) then arrival;
* ``items`` (HASH): each item's JSON, what the dispatcher needs to admit it and send its message;
* ``ready`` (ZSET): the keys with queued items, scored by when their head may be tried (now, or
  the end of a rate or budget deferral);
* ``passes`` (HASH): each key's pass; serving an item adds ``1 / weight`` to its key's pass, and
  the ready key with the lowest pass goes next (stride scheduling: weighted round robin without
  rounds). A key whose queue was empty starts at the last pass served, so idle time earns no credit.

Parking and taking are one script call each (``lua/flow_park.lua``, ``lua/flow_take.lua``); the
pass lock is a ``SET NX PX`` with a ``dirty`` flag, so that work parked or released during a
pass is looked at by one more pass rather than by a second dispatcher at once. All keys are
under the flow hash tag (``flowkeys.py``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .flowkeys import FlowKeys
from .scripts import SOURCES

__all__ = ["FlowQueue", "PRIORITIES", "DEFAULT_PRIORITY"]

#: Priorities of deferred work: 1 is served first, 5 last (as Temporal's priority keys).
PRIORITIES = range(1, 6)
DEFAULT_PRIORITY = 3


#: The head of a queue and its item, in one round trip (KEYS: deferred, items).
_HEAD = ("local ids = redis.call('ZRANGE', KEYS[1], 0, 0) "
         "if #ids == 0 then return false end "
         "return {ids[1], redis.call('HGET', KEYS[2], ids[1])}")
#: Delete a lock only if it is still the caller's (one round trip).
_UNLOCK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class FlowQueue:
    """The fair-dispatch queues of one deployment (its :class:`FlowKeys`)."""

    def __init__(self, client: Any, keys: FlowKeys) -> None:
        self.client: Any = client
        self.keys = keys
        self._park = client.register_script(SOURCES["flow_park"])
        self._take = client.register_script(SOURCES["flow_take"])
        self._unlock = client.register_script(_UNLOCK)
        self._head = client.register_script(_HEAD)

    def _four(self, fkey: str) -> list[str]:
        k = self.keys
        return [k.deferred(fkey), k.items(), k.ready(), k.passes()]

    def park(self, item_id: str, fkey: str, item: dict[str, Any], *, priority: int = DEFAULT_PRIORITY,
             ready_at_ms: int | None = None) -> bool:
        """Queue ``item`` under ``fkey`` (again: keeps its place, updates it); True when new.

        ``ready_at_ms``: when the key's head may be tried (a rate or budget deferral's end);
        None: at once (a slot deferral: a release will try it)."""
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be 1 to 5, got {priority!r}")
        reply = self._park(keys=self._four(fkey), args=[item_id, str(priority), json.dumps(item, separators=(",", ":")),
                                                       "" if ready_at_ms is None else str(int(ready_at_ms)), fkey])
        return bool(int(reply[0]))

    def take(self, fkey: str, item_id: str, *, weight: int | None = None) -> int:
        """Remove ``item_id`` from ``fkey``'s queue; with ``weight``, it was served: the key's pass
        advances by ``1 / weight``. Returns the items left in the queue."""
        stride = "" if weight is None else f"{1.0 / max(1, int(weight)):.9f}"
        return int(self._take(keys=self._four(fkey), args=[item_id, fkey, stride])[1])

    def head(self, fkey: str) -> tuple[str, dict[str, Any]] | None:
        """The next item of ``fkey``'s queue (lowest priority number, then oldest), or None."""
        found = self._head(keys=[self.keys.deferred(fkey), self.keys.items()])
        if not found:
            return None
        item_id, raw = _text(found[0]), found[1]
        if raw is None:  # no item for the id (both are written by one script call: only by hand)
            return item_id, {}
        return item_id, json.loads(_text(raw))

    def hold(self, fkey: str, until_ms: int) -> None:
        """Try ``fkey``'s head no sooner than ``until_ms`` (its rate or budget refills then)."""
        self.client.zadd(self.keys.ready(), {fkey: int(until_ms)}, xx=True)

    def ready(self, now_ms: int, limit: int = 1000, only: str | None = None) -> list[tuple[str, float]]:
        """The keys whose head may be tried at ``now_ms``, with their pass (lowest first);
        ``only``: that key, if it is ready."""
        if only is not None:
            score = self.client.zscore(self.keys.ready(), only)
            keys = [only] if score is not None and score <= now_ms else []
        else:
            keys = [_text(k) for k in self.client.zrangebyscore(self.keys.ready(), "-inf", now_ms, start=0,
                                                                num=limit)]
        if not keys:
            return []
        passes = self.client.hmget(self.keys.passes(), keys)
        found = [(k, float(_text(p)) if p is not None else 0.0) for k, p in zip(keys, passes)]
        return sorted(found, key=lambda kp: (kp[1], kp[0]))

    def next_ready_ms(self) -> int | None:
        """When the earliest held key may be tried (None: nothing is queued)."""
        first = self.client.zrange(self.keys.ready(), 0, 0, withscores=True)
        return int(first[0][1]) if first else None

    def queued(self) -> int:
        """How many keys have queued work (0: nothing is deferred anywhere)."""
        return int(self.client.zcard(self.keys.ready()))

    def depth(self, fkey: str) -> int:
        """How many items wait in ``fkey``'s queue."""
        return int(self.client.zcard(self.keys.deferred(fkey)))

    def is_parked(self, item_id: str) -> bool:
        return bool(self.client.hexists(self.keys.items(), item_id))

    def position(self, fkey: str, item_id: str) -> int | None:
        """0 for the head of ``fkey``'s queue; None when the item is not in it."""
        rank = self.client.zrank(self.keys.deferred(fkey), item_id)
        return None if rank is None else int(rank)

    # -- one pass at a time ------------------------------------------------------------------

    def mark_dirty(self) -> None:
        self.client.set(self.keys.dirty(), "1")

    def clear_dirty(self) -> bool:
        """Was work parked or released since the last clear? (and clear it)."""
        return bool(self.client.delete(self.keys.dirty()))

    @contextmanager
    def lock(self, ttl_ms: int) -> Iterator[bool]:
        """Hold the fleet's dispatcher lock for the block (yields False when another holds it).
        A holder that dies loses it after ``ttl_ms``."""
        me = uuid.uuid4().hex
        got = bool(self.client.set(self.keys.dispatching(), me, nx=True, px=max(1, int(ttl_ms))))
        try:
            yield got
        finally:
            if got:  # only our own lock: a pass longer than ttl_ms may have lost it to another
                self._unlock(keys=[self.keys.dispatching()], args=[me])

    def schedule_wake(self, at_ms: int, now_ms: int) -> bool:
        """Claim the timed pass at ``at_ms``: True when no pass is scheduled at or before it
        (the caller sends one); False when one is already due by then."""
        key = self.keys.wake_at()
        current = self.client.get(key)
        if current is not None and now_ms <= int(_text(current)) <= at_ms:
            return False
        self.client.set(key, str(int(at_ms)), px=max(1000, at_ms - now_ms + 60_000))
        return True
