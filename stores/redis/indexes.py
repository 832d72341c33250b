"""What a :class:`~stores.redis.RedisBackend` reads and writes beside a run's commit.

The cross-run keys (``stores/redis/keys.py``, second group): leases and timers, which the
recovery sweep claims; dead letters; the sweep's heartbeat; the events stream; counts and
listings from the indexes. Also the two side fields of a run hash that no commit writes:
its last failure (``f``) and the removal of its dispatch (``d``). The Celery workers, the
client, the CLI, the demo and ``doctor`` call these methods and never Redis directly.
"""

from __future__ import annotations

import json
from typing import Any

from runtime import RunStatus
from runtime.models import validate_run_id

from .keys import Keys
from .scripts import Reply

__all__ = ["RedisIndexes", "LAST_FAILURE_MAX_CHARS", "json_map"]

#: Characters of traceback kept with a run's last failure (the end is kept).
LAST_FAILURE_MAX_CHARS = 8000
#: Milliseconds a silent process's heartbeat entry is kept (the heartbeat's details expire sooner).
HEARTBEATS_KEPT_MS = 3_600_000


def json_map(raw: Any) -> dict[str, Any] | None:
    """A JSON object kept beside the runs (a last failure, a stuck run's details), or None when
    absent or not a JSON object (such a field is a courtesy: unreadable means absent)."""
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _ids(members: Any) -> list[str]:
    return [m.decode() for m in members]


class RedisIndexes:
    """The cross-run keys of a backend (a base class of :class:`~stores.redis.RedisBackend`)."""

    client: Any
    keys: Keys
    _claim_script: Any
    _set_failure_script: Any
    _fence_script: Any

    def time_ms(self) -> int:
        """The Redis server's clock in epoch ms (wake times are judged by it, not by ours)."""
        sec, usec = self.client.time()
        return int(sec) * 1000 + int(usec) // 1000

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    def server_info(self) -> dict[str, Any]:
        """What ``doctor`` reports of the server: ``redis_version`` and ``aof_enabled``."""
        return {"redis_version": self.client.info("server").get("redis_version"),
                "aof_enabled": bool(self.client.info("persistence").get("aof_enabled"))}

    # -- leases and timers -----------------------------------------------------------------------

    def claim_due(self, key: str, *, limit: int, hold_ms: int) -> tuple[int, list[str]]:
        """Claim up to ``limit`` members of the sorted set ``key`` (timers or leases) whose score
        is due by the Redis clock, pushing each score ``hold_ms`` ahead; (now in ms, ids)."""
        now, *ids = self._claim_script(keys=[key], args=[int(limit), int(hold_ms)])
        return int(now), _ids(ids)

    def renew_lease(self, run_id: str, lease_ms: int, now_ms: int | None = None) -> None:
        """Push the lease of a run that holds one to ``lease_ms`` from now (nothing if it holds none)."""
        now = self.time_ms() if now_ms is None else now_ms
        self.client.zadd(self.keys.leases(), {validate_run_id(run_id): now + int(lease_ms)}, xx=True)

    def grant_lease(self, run_id: str, version: int, lease_ms: int, now_ms: int) -> int | None:
        """Grant the expired lease of a run again, for the message the sweep sends next: its
        fencing token goes up by one (a worker still holding the old one is refused at its
        commit) and its lease runs ``lease_ms`` from ``now_ms``. Returns the new token, or None
        when the run moved since it was loaded at ``version`` (nothing is granted then).
        """
        rid = validate_run_id(run_id)
        code, token = self._fence_script(keys=[self.keys.run(rid)], args=["grant", int(version), int(now_ms)])
        if code != Reply.OK:
            return None
        # A separate call (the lease index is in another slot on Cluster); the claim that found
        # the lease expired already holds it, so a crash in between costs one hold period.
        self.client.zadd(self.keys.leases(), {rid: int(now_ms) + int(lease_ms)}, xx=True)
        return int(token)

    def renew_held_lease(self, run_id: str, token: int, lease_ms: int) -> bool:
        """Push the lease of a run ``lease_ms`` from now if ``token`` is still its fencing token
        (a long effect renews the lease it holds while it runs); False when the lease was
        granted to another since (nothing is renewed)."""
        rid = validate_run_id(run_id)
        code, _token = self._fence_script(keys=[self.keys.run(rid)], args=["check", int(token), ""])
        if code != Reply.OK:
            return False
        self.renew_lease(rid, lease_ms)
        return True

    def count_leases_expired(self, by_ms: int) -> int:
        """Runs whose lease expired at or before ``by_ms`` (a lost message or a dead worker)."""
        return int(self.client.zcount(self.keys.leases(), "-inf", by_ms))

    def count_timers_due(self, by_ms: int) -> int:
        """Runs waiting until a time at or before ``by_ms``."""
        return int(self.client.zcount(self.keys.timers(), "-inf", by_ms))

    def clear_dispatch(self, run_id: str) -> None:
        """Remove the dispatch and the lease of a run (after its last follow-up is done)."""
        rid = validate_run_id(run_id)
        # Two keys in two slots on Cluster: not a transaction. A lease left without a dispatch
        # is dropped by the next sweep.
        pipe = self.client.pipeline(transaction=False)
        pipe.hdel(self.keys.run(rid), "d")
        pipe.zrem(self.keys.leases(), rid)
        pipe.execute()

    def count_lost(self, run_id: str) -> int:
        """One more expired lease of the run's dispatch (field ``n``, which every commit
        removes); returns how many expired with no commit in between."""
        return int(self.client.hincrby(self.keys.run(validate_run_id(run_id)), "n", 1))

    def mark_sweep(self, now_ms: int) -> None:
        """Note that a recovery sweep ran at ``now_ms`` (``doctor``: is beat alive?)."""
        self.client.set(self.keys.sweep_heartbeat(), now_ms)

    def last_sweep_ms(self) -> int | None:
        """When the last recovery sweep ran (Redis clock, epoch ms), or None if none has."""
        raw = self.client.get(self.keys.sweep_heartbeat())
        return int(raw) if raw is not None else None

    # -- who is alive (workers/heartbeat.py) ----------------------------------------------------

    def write_heartbeat(self, process_id: str, details: dict[str, Any], *, ttl_ms: int) -> int:
        """Note that a process (a worker, beat) is alive now, with ``details`` (expiring after
        ``ttl_ms``); drops the entries of processes silent for an hour. Returns the Redis time."""
        now = self.time_ms()
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(k.heartbeats(), {process_id: now})
        pipe.set(k.heartbeat(process_id), json.dumps({**details, "at": now}), px=int(ttl_ms))
        pipe.zremrangebyscore(k.heartbeats(), "-inf", now - HEARTBEATS_KEPT_MS)
        pipe.execute()
        return now

    def drop_heartbeat(self, process_id: str) -> None:
        """Forget a process that stops cleanly."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zrem(self.keys.heartbeats(), process_id)
        pipe.delete(self.keys.heartbeat(process_id))
        pipe.execute()

    def live_processes(self, since_ms: int) -> list[dict[str, Any]]:
        """The processes whose last heartbeat is at or after ``since_ms`` (Redis clock), each as
        its details plus ``process_id`` and ``at``; two commands whatever their number."""
        members = self.client.zrangebyscore(self.keys.heartbeats(), since_ms, "+inf", withscores=True)
        if not members:
            return []
        raws = self.client.mget([self.keys.heartbeat(m.decode()) for m, _score in members])
        out: list[dict[str, Any]] = []
        for (member, score), raw in zip(members, raws):
            try:
                details = json.loads(raw) if raw else {}
            except ValueError:
                details = {}
            out.append({**(details if isinstance(details, dict) else {}), "process_id": member.decode(),
                        "at": int(score)})
        return out

    # -- one run's place in the indexes (explain) ------------------------------------------------

    def lease_ms(self, run_id: str) -> int | None:
        """When the run's lease expires (epoch ms, Redis clock), or None when it holds none."""
        score = self.client.zscore(self.keys.leases(), validate_run_id(run_id))
        return int(score) if score is not None else None

    def timer_ms(self, run_id: str) -> int | None:
        """When the run's timer is due (epoch ms), or None when it has none."""
        score = self.client.zscore(self.keys.timers(), validate_run_id(run_id))
        return int(score) if score is not None else None

    def count_waiting_on(self, wait_key: str) -> int:
        """How many runs wait on ``wait_key`` (one SCARD)."""
        return int(self.client.scard(self.keys.waiting_on(wait_key)))

    # -- failures and refused messages -----------------------------------------------------------

    def set_last_failure(self, run_id: str, failure: dict[str, Any]) -> bool:
        """Keep the newest failure of a run (a raising node or effect handler, with its
        traceback) in field ``f`` of its run hash: outside the hash-chained ledger, replaced by
        the next failure, capped at ``LAST_FAILURE_MAX_CHARS`` of traceback. False when there
        is no such run (nothing is written)."""
        tb = failure.get("traceback")
        if isinstance(tb, str) and len(tb) > LAST_FAILURE_MAX_CHARS:
            # The end of a traceback (the raising frame and the message) is what says most.
            failure = {**failure, "traceback": "...(cut)...\n" + tb[-LAST_FAILURE_MAX_CHARS:]}
        rid = validate_run_id(run_id)
        raw = json.dumps(failure, ensure_ascii=False, default=str)
        # Only a run that exists gets the field (HSET alone would create a hash with no state).
        return Reply(int(self._set_failure_script(keys=[self.keys.run(rid)], args=[raw]))) is Reply.OK

    def last_failure(self, run_id: str) -> dict[str, Any] | None:
        """The newest failure kept by :meth:`set_last_failure`, or None."""
        return json_map(self.client.hget(self.keys.run(validate_run_id(run_id)), "f"))

    def add_dead_letter(self, entry: dict[str, Any], *, keep: int) -> None:
        """Put a refused message first in the dead-letter list, which keeps the newest ``keep``."""
        key = self.keys.dead_letters()
        pipe = self.client.pipeline(transaction=False)
        pipe.lpush(key, json.dumps(entry, ensure_ascii=False))
        pipe.ltrim(key, 0, keep - 1)
        pipe.execute()

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` refused messages, newest first."""
        return [json.loads(raw) for raw in self.client.lrange(self.keys.dead_letters(), 0, limit - 1)]

    def count_dead_letters(self) -> int:
        return int(self.client.llen(self.keys.dead_letters()))

    # -- events, counts and listings -------------------------------------------------------------

    def follow_events(self, *, last_id: str = "$", block_ms: int = 5000, count: int = 100
                      ) -> list[tuple[str, dict[str, str]]]:
        """Commits after ``last_id`` (``"$"``: from now on), waiting up to ``block_ms`` for one.

        A blocking ``XREAD`` on the events stream, not polling: pass the last id returned to
        read on. Each event is ``(id, {"run_id", "status", "v"})``.
        """
        reply = self.client.xread({self.keys.events(): last_id}, count=count, block=block_ms)
        out: list[tuple[str, dict[str, str]]] = []
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                out.append((entry_id.decode(), {k.decode(): v.decode() for k, v in fields.items()}))
        return out

    def last_event_id(self) -> str:
        """The id of the newest event ("0" when there is none): follow from it to miss nothing after now."""
        newest = self.client.xrevrange(self.keys.events(), count=1)
        return newest[0][0].decode() if newest else "0"

    def count_runs(self, *, status: RunStatus | str | None = None, workflow_id: str | None = None) -> int:
        """Runs with ``status``, else of ``workflow_id``, else all, from one index (ZCARD)."""
        if status is not None:
            key = self.keys.by_status(RunStatus(status).value)
        elif workflow_id is not None:
            key = self.keys.by_workflow(workflow_id)
        else:
            key = self.keys.by_updated()
        return int(self.client.zcard(key))

    def run_ids(self) -> list[str]:
        """Every run id, least recently updated first."""
        return _ids(self.client.zrange(self.keys.by_updated(), 0, -1))

    def children_of(self, parent_run_id: str) -> list[str]:
        """Ids of the runs whose parent is ``parent_run_id``, sorted."""
        return sorted(_ids(self.client.smembers(self.keys.children(parent_run_id))))

    def runs_waiting_on(self, wait_key: str) -> list[str]:
        """Ids of the runs waiting on ``wait_key`` (from the wait-key index, no scan), sorted."""
        return sorted(_ids(self.client.smembers(self.keys.waiting_on(wait_key))))
