"""What the stuck-run detector and the SLA alerts keep in Redis (a base class of the backend).

The detector (``workers/stuck.py``, run by the recovery sweep) reads windows of the status
and wait-reason indexes by score (``ZRANGEBYSCORE ... LIMIT``, never a scan), looks at the
runs it found when they are due (``stuck:looks``, claimed like the leases), and keeps the
runs it calls stuck per cause (``stuck:<cause>``, scored by since when) with their details
(``stuck:runs``). A change of a run's stuck state is an event on the events stream
(``run.stuck``, ``run.unstuck``, ``sla.breached``) beside the commits'.

An SLA alert is decided once per run and rule: :meth:`RedisStuck.sla_fire_once` writes the
alert (``sla:alerts``, field ``<run_id> <rule>``) and schedules its action (``sla:outbox``)
in one transaction that does nothing when the field exists. ``docs/redis-layout.md`` lists
the keys.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis

from .indexes import json_map
from .keys import Keys

__all__ = ["RedisStuck"]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStuck:
    """The detector's and the SLA alerts' keys (``workers/stuck.py``, ``workers/sla.py``)."""

    client: Any
    keys: Keys
    events_maxlen: int
    _claim_script: Any

    # -- windows of the indexes and the looks ----------------------------------------------------

    def index_window(self, key: str, low: float | None, high: float, limit: int) -> list[tuple[str, float]]:
        """Members of the sorted set ``key`` scored above ``low`` (or from the lowest, when None)
        up to ``high``, lowest first, at most ``limit``; each with its score."""
        low_arg = "-inf" if low is None else f"({low!r}"
        members = self.client.zrangebyscore(key, low_arg, high, start=0, num=int(limit), withscores=True)
        return [(_text(m), float(score)) for m, score in members]

    def stuck_cursors(self) -> dict[str, float]:
        """Index name -> the highest score the detector has read of it. (The same hash keeps the
        events-stream cursors, ids like ``1764...-0``, read on their own: they are left out.)"""
        out = {}
        for k, v in self.client.hgetall(self.keys.stuck_cursors()).items():
            try:
                out[_text(k)] = float(v)
            except ValueError:
                continue
        return out

    def set_stuck_cursors(self, cursors: Mapping[str, float | str]) -> None:
        if cursors:
            self.client.hset(self.keys.stuck_cursors(), mapping={k: str(v) for k, v in cursors.items()})

    def schedule_looks(self, looks: Mapping[str, int]) -> None:
        """Look at each run at the given time (epoch ms); replaces an earlier schedule."""
        if looks:
            self.client.zadd(self.keys.stuck_looks(), {rid: int(at) for rid, at in looks.items()})

    def drop_looks(self, run_ids: Iterable[str]) -> None:
        ids = list(run_ids)
        if ids:
            self.client.zrem(self.keys.stuck_looks(), *ids)

    def count_looks(self) -> int:
        return int(self.client.zcard(self.keys.stuck_looks()))

    # -- the stuck runs --------------------------------------------------------------------------

    def stuck_entries(self, run_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The stored entries of those runs that are stuck (run id -> entry); one HMGET."""
        if not run_ids:
            return {}
        raws = self.client.hmget(self.keys.stuck_runs(), list(run_ids))
        return {rid: entry for rid, raw in zip(run_ids, raws) if (entry := json_map(raw)) is not None}

    def _event(self, pipe: Any, fields: Mapping[str, Any]) -> None:
        pipe.xadd(self.keys.events(), {k: "" if v is None else str(v) for k, v in fields.items()},
                  maxlen=self.events_maxlen, approximate=True)

    def mark_stuck(self, run_id: str, entry: Mapping[str, Any], *, old_cause: str | None = None,
                   event: bool = True) -> None:
        """Keep ``run_id`` as stuck for ``entry["cause"]`` since ``entry["since_ms"]``; with
        ``event``, add a ``run.stuck`` event (run id, cause, since, the version seen)."""
        k = self.keys
        cause = str(entry["cause"])
        pipe = self.client.pipeline(transaction=False)
        if old_cause and old_cause != cause:
            pipe.zrem(k.stuck(old_cause), run_id)
        pipe.zadd(k.stuck(cause), {run_id: int(entry["since_ms"])})
        pipe.hset(k.stuck_runs(), run_id, json.dumps(dict(entry), ensure_ascii=False, default=str))
        if event:
            self._event(pipe, {"event": "run.stuck", "run_id": run_id, "cause": cause, "since": entry.get("since"),
                               "workflow_id": entry.get("workflow_id")})
        pipe.execute()

    def unmark_stuck(self, run_id: str, entry: Mapping[str, Any], *, why: str) -> None:
        """Forget that ``run_id`` is stuck and add a ``run.unstuck`` event (``why``: moved, ended...)."""
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.zrem(k.stuck(str(entry.get("cause"))), run_id)
        pipe.hdel(k.stuck_runs(), run_id)
        self._event(pipe, {"event": "run.unstuck", "run_id": run_id, "cause": entry.get("cause"),
                           "since": entry.get("since"), "why": why})
        pipe.execute()

    def list_stuck(self, causes: Sequence[str], *, by_ms: float, limit: int = 1000
                   ) -> dict[str, list[dict[str, Any]]]:
        """Cause -> the runs stuck for it since ``by_ms`` or before (oldest first, at most
        ``limit`` per cause), each entry with its ``run_id``; causes with none are left out.
        One ZRANGEBYSCORE per cause and one HMGET."""
        pipe = self.client.pipeline(transaction=False)
        for cause in causes:
            pipe.zrangebyscore(self.keys.stuck(cause), "-inf", by_ms, start=0, num=int(limit))
        found = {cause: [_text(m) for m in members] for cause, members in zip(causes, pipe.execute()) if members}
        ids = [rid for members in found.values() for rid in members]
        entries = self.stuck_entries(ids)
        out: dict[str, list[dict[str, Any]]] = {}
        for cause, members in found.items():
            rows = [{**entries[rid], "run_id": rid} for rid in members if rid in entries]
            if rows:
                out[cause] = rows
        return out

    def count_stuck(self, causes: Sequence[str]) -> dict[str, int]:
        """Cause -> how many runs are stuck for it (ZCARD each, one round trip); zeros left out."""
        pipe = self.client.pipeline(transaction=False)
        for cause in causes:
            pipe.zcard(self.keys.stuck(cause))
        return {cause: int(n) for cause, n in zip(causes, pipe.execute()) if n}

    # -- SLA alerts ------------------------------------------------------------------------------

    def sla_fire_once(self, alert_id: str, alert: Mapping[str, Any], *, due_ms: int,
                      event: Mapping[str, Any] | None = None) -> bool:
        """Write the alert ``alert_id`` and schedule its action at ``due_ms``, in one transaction,
        unless the alert exists (False: it was decided before, by this or another sweep).
        ``event`` is added to the events stream in the same transaction."""
        k = self.keys
        raw = json.dumps(dict(alert), ensure_ascii=False, default=str)
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(k.sla_alerts())
                    if pipe.hexists(k.sla_alerts(), alert_id):
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.hset(k.sla_alerts(), alert_id, raw)
                    pipe.zadd(k.sla_outbox(), {alert_id: int(due_ms)})
                    if event is not None:
                        self._event(pipe, event)
                    pipe.execute()
                    return True
                except redis.WatchError:  # another alert was written meanwhile: look again
                    continue

    def schedule_wait_hooks(self, url: str, *, limit: int) -> int:
        """Schedule a webhook for each named waits' event (``wait.*``) added to the events stream
        since the last call, as an alert (``rule: "waits"``) the detector posts. The cursor and
        the alerts move in one transaction watched on the cursor, so that two sweeps never
        schedule one event twice. Returns how many were scheduled."""
        k = self.keys
        field = "waits_webhook"
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(k.stuck_cursors())
                    raw = pipe.hget(k.stuck_cursors(), field)
                    if raw is None:  # first time: from now on (not the whole capped stream)
                        newest = pipe.xrevrange(k.events(), count=1)
                        pipe.multi()
                        pipe.hset(k.stuck_cursors(), field, newest[0][0] if newest else "0-0")
                        pipe.execute()
                        return 0
                    entries = pipe.xrange(k.events(), min=f"({_text(raw)}", max="+", count=int(limit))
                    if not entries:
                        pipe.unwatch()
                        return 0
                    sec, usec = self.client.time()
                    now_ms = int(sec) * 1000 + int(usec) // 1000
                    pipe.multi()
                    n = 0
                    for entry_id, fields in entries:
                        name = _text(fields.get(b"event", b""))
                        if not name.startswith("wait.") or b"data" not in fields:
                            continue
                        event = json.loads(fields[b"data"])
                        alert_id = f"wait {_text(entry_id)}"
                        alert = {**event, "type": name, "action": "webhook", "rule": "waits", "url": url,
                                 "state": "pending"}
                        pipe.hset(k.sla_alerts(), alert_id, json.dumps(alert, ensure_ascii=False, default=str))
                        pipe.zadd(k.sla_outbox(), {alert_id: now_ms})
                        n += 1
                    pipe.hset(k.stuck_cursors(), field, entries[-1][0])
                    pipe.execute()
                    return n
                except redis.WatchError:  # another sweep took this window: read on from its cursor
                    continue

    def claim_alerts(self, *, limit: int, hold_ms: int) -> list[str]:
        """Claim the alert actions that are due (each claimed by one sweep per ``hold_ms``)."""
        _now, *ids = self._claim_script(keys=[self.keys.sla_outbox()], args=[int(limit), int(hold_ms)])
        return [_text(i) for i in ids]

    def sla_alert(self, alert_id: str) -> dict[str, Any] | None:
        return json_map(self.client.hget(self.keys.sla_alerts(), alert_id))

    def sla_alerts_of(self, alert_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not alert_ids:
            return {}
        raws = self.client.hmget(self.keys.sla_alerts(), list(alert_ids))
        return {a: alert for a, raw in zip(alert_ids, raws) if (alert := json_map(raw)) is not None}

    def update_alert(self, alert_id: str, alert: Mapping[str, Any], *, retry_at_ms: int | None = None) -> None:
        """Store the alert's new state; its action is due again at ``retry_at_ms``, or done (None)."""
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(k.sla_alerts(), alert_id, json.dumps(dict(alert), ensure_ascii=False, default=str))
        if retry_at_ms is None:
            pipe.zrem(k.sla_outbox(), alert_id)
        else:
            pipe.zadd(k.sla_outbox(), {alert_id: int(retry_at_ms)})
        pipe.execute()

    def drop_alerts(self, alert_ids: Sequence[str]) -> None:
        """Forget alerts whose action is done (the run ended): their fields and outbox entries."""
        if alert_ids:
            pipe = self.client.pipeline(transaction=False)
            pipe.hdel(self.keys.sla_alerts(), *alert_ids)
            pipe.zrem(self.keys.sla_outbox(), *alert_ids)
            pipe.execute()

    def count_pending_alerts(self) -> int:
        return int(self.client.zcard(self.keys.sla_outbox()))
