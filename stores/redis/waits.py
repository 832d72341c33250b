"""The cross-run indexes of open named waits (``runtime/waitset.py``), so that listing the waits
of one assignee, the overdue ones, a workflow's or an agent tree's never scans runs.

Each open wait is the member ``"<run_id> <wait name>"`` of (``stores/redis/keys.py``):

* ``waits:open`` (score: opened at), ``waits:workflow:<id>`` and ``waits:root:<root run id>``
  (the run's own id for a run with no parent: a tree's waits are listed under its root);
* ``waits:assignee:<id>`` for each current assignee (score: the deadline; none sorts last);
* ``waits:deadline`` when it has a deadline (score: the deadline);
* the set ``waits:key:<wait key>`` (an ``emit`` of that key reaches it).

The run's state, committed atomically, is what is true; the indexes follow it with one rule
that keeps them complete: entries are *added before* the commit that opens or reassigns a wait
and *removed after* the commit that closes it. A crash in between leaves an entry too many,
never one missing, and a reader drops (and deletes) an entry whose wait its run no longer has
open. Entries of a run that will never commit again (deleted by hand) go the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from runtime import RunState, RunStatus
from runtime._clock import iso_ms
from runtime.waitset import is_wait_set, open_names, wait_named

from .keys import Keys

if TYPE_CHECKING:
    from .runs import RedisRunStore

__all__ = ["RedisWaits", "Entry", "NO_DEADLINE_MS"]

#: The assignee index's score of a wait with no deadline: after every deadline (year ~5138).
NO_DEADLINE_MS = 10**14

#: An index entry: (key, member, score; None for a set member).
Entry = tuple[str, str, "float | None"]


class RedisWaits:
    """Named waits' indexes (a base class of :class:`~stores.redis.RedisBackend`)."""

    client: Any
    keys: Keys
    runs: RedisRunStore

    def wait_entries(self, run: RunState) -> set[Entry]:
        """The index entries of ``run``'s open named waits (none when it waits on no set)."""
        if run.status != RunStatus.WAITING or not is_wait_set(run.waiting):
            return set()
        k, w = self.keys, run.waiting
        assert w is not None and w.details is not None
        root = w.details.get("root") or run.run_id
        out: set[Entry] = set()
        for name in open_names(w):
            wait = wait_named(w, name)
            assert wait is not None
            member, opened, deadline = f"{run.run_id} {name}", float(wait["opened_ms"]), wait["deadline_ms"]
            out |= {(k.waits_open(), member, opened), (k.waits_of_workflow(run.workflow_id), member, opened),
                    (k.waits_under(root), member, opened), (k.waits_keyed(wait["wait_key"]), member, None)}
            if root != run.run_id:
                out.add((k.waits_under(run.run_id), member, opened))
            for assignee in wait["assignees"]:
                out.add((k.waits_of(assignee), member, float(deadline if deadline is not None else NO_DEADLINE_MS)))
            if deadline is not None:
                out.add((k.waits_by_deadline(), member, float(deadline)))
        return out

    def put_wait_entries(self, entries: Iterable[Entry]) -> None:
        """Add entries (before the commit that opens or reassigns their waits)."""
        self._wait_entries(entries, add=True)

    def drop_wait_entries(self, entries: Iterable[Entry]) -> None:
        """Remove entries (after the commit that closes their waits)."""
        self._wait_entries(entries, add=False)

    def _wait_entries(self, entries: Iterable[Entry], *, add: bool) -> None:
        pipe = self.client.pipeline(transaction=False)
        n = 0
        for key, member, score in entries:
            n += 1
            if score is None:
                (pipe.sadd if add else pipe.srem)(key, member)
            elif add:
                pipe.zadd(key, {member: score})
            else:
                pipe.zrem(key, member)
        if n:
            pipe.execute()

    def waits_keyed_by(self, wait_key: str) -> list[tuple[str, str]]:
        """(run id, wait name) of the open named waits an event with ``wait_key`` reaches."""
        return [tuple(m.decode().split(" ", 1)) for m in self.client.smembers(self.keys.waits_keyed(wait_key))
                ]  # type: ignore[misc]

    def list_open_waits(self, *, assignee: str | None = None, overdue: bool = False, workflow_id: str | None = None,
                        root_run_id: str | None = None, limit: int = 50, offset: int = 0,
                        now_ms: int | None = None) -> list[dict[str, Any]]:
        """Open named waits, soonest deadline first for an assignee or ``overdue``, else oldest
        first; each with its run, prompt, schema, choices, assignees, deadline and escalation
        level. One index is read by range (``assignee`` first, then ``overdue``, ``root_run_id``,
        ``workflow_id``), the others filter the page. Entries whose wait is closed are dropped
        from the index as they are met."""
        k = self.keys
        if now_ms is None:
            sec, usec = self.client.time()
            now_ms = int(sec) * 1000 + int(usec) // 1000
        if assignee is not None:
            key = k.waits_of(assignee)
        elif overdue:
            key = k.waits_by_deadline()
        elif root_run_id is not None:
            key = k.waits_under(root_run_id)
        elif workflow_id is not None:
            key = k.waits_of_workflow(workflow_id)
        else:
            key = k.waits_open()
        by_deadline = assignee is not None or overdue
        out: list[dict[str, Any]] = []
        skipped, start, batch = 0, 0, limit + offset  # more only when stale entries were dropped
        while len(out) < limit:
            if overdue:
                members = self.client.zrangebyscore(key, "-inf", f"({now_ms}", start=start, num=batch)
            else:
                members = self.client.zrange(key, start, start + batch - 1)
            if not members:
                break
            start += len(members)
            for item in self._resolve_page(key, [m.decode() for m in members], now_ms):
                if workflow_id is not None and item["workflow_id"] != workflow_id:
                    continue
                if root_run_id is not None and item["root_run_id"] != root_run_id and item["run_id"] != root_run_id:
                    continue
                if overdue and not item["overdue"]:
                    continue
                if assignee is not None and assignee not in item["assignees"]:
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                out.append(item)
                if len(out) == limit:
                    break
        if not by_deadline:
            return out
        return sorted(out, key=lambda i: (i["deadline_ms"] if i["deadline_ms"] is not None else NO_DEADLINE_MS))

    def _resolve_page(self, key: str, members: list[str], now_ms: int) -> list[dict[str, Any]]:
        """The waits ``members`` name, read from their runs' states (one round trip); members
        whose wait is not open any more are removed from ``key``."""
        pairs = [m.split(" ", 1) for m in members]
        states = {run.run_id: run for run in self.runs.load_many(list(dict.fromkeys(rid for rid, _ in pairs)))}
        out, stale = [], []
        for member, (rid, name) in zip(members, pairs):
            run = states.get(rid)
            w = run.waiting if run is not None and run.status == RunStatus.WAITING else None
            if w is None or name not in open_names(w):
                stale.append(member)
                continue
            assert run is not None
            out.append(describe_open_wait(run, name, now_ms))
        if stale:
            self.client.zrem(key, *stale)
        return out


def describe_open_wait(run: RunState, name: str, now_ms: int) -> dict[str, Any]:
    """What a person (or a console) needs to answer one open wait of ``run``."""
    w = run.waiting
    assert w is not None and w.details is not None
    wait = wait_named(w, name)
    assert wait is not None
    deadline = wait["deadline_ms"]
    timers = [t for t in wait["timers"] if not t["fired"]]
    return {
        "run_id": run.run_id, "workflow_id": run.workflow_id, "wait": name, "kind": wait["kind"],
        "prompt": wait["prompt"], "choices": wait["choices"], "schema": wait["schema"],
        "assignees": list(wait["assignees"]), "level": wait["level"], "wait_key": wait["wait_key"],
        "opened_at": iso_ms(wait["opened_ms"]),
        "deadline": iso_ms(deadline) if deadline is not None else None, "deadline_ms": deadline,
        "overdue": deadline is not None and deadline <= now_ms,
        "next_timer": {"id": timers[0]["id"], "at": iso_ms(timers[0]["at_ms"])} if timers else None,
        "mode": w.details["mode"], "root_run_id": w.details.get("root") or run.run_id,
        "parent_run_id": run.parent_run_id,
    }
