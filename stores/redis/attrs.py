"""The attribute indexes of runs (``workers/attrs.py``): one sorted set per (name, value), so that
the runs started with ``customer=c-42`` are listed newest first without a scan.

A run's attributes are kept in its state as ``vars["_attrs"]`` (name -> text), written by the
commit that creates the run and never changed. The index ``idx:attr:<name>:<value>``
(``stores/redis/keys.py``) holds its run id, scored by the run's creation time in epoch ms (the
microseconds as the fraction, so runs created within one millisecond still sort).

The index is written outside ``commit.lua``, as the named waits' indexes are
(``stores/redis/waits.py``), with one rule that keeps it complete: the entries are *added
before* the commit that creates the run (``ZADD NX``: an entry already there keeps its score),
and nothing removes them on a refused or failed create, which may have lost a race to an equal
create that holds the same entry. So an entry may be one too many, never one missing. A listing
(:meth:`RedisRunAttrs.runs_by_attrs`) drops the entries it meets that can never be right:

* the run exists but was not started with that value (a create refused because the run id was
  taken by a run with other attributes);
* the run does not exist and the entry is older than ``ORPHAN_GRACE_MS`` by the Redis clock (a
  create that failed after the entry was added, or a run deleted by hand; the stores never
  delete runs). A younger one is skipped, not dropped: its create may still be on its way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from runtime import RunState

from .keys import Keys

if TYPE_CHECKING:
    from .runs import RedisRunStore

__all__ = ["RedisRunAttrs", "ATTRS_VARS", "ORPHAN_GRACE_MS", "attrs_of"]

#: Where a run keeps its attributes (name -> text), set by the commit that creates it.
ATTRS_VARS = "_attrs"
#: Milliseconds an index entry whose run does not exist is kept (its create may be on its way).
ORPHAN_GRACE_MS = 300_000
#: Index entries read per round trip.
_PAGE = 200


def attrs_of(run: RunState) -> dict[str, str]:
    """The attributes a run was started with ({} when none)."""
    found = run.vars.get(ATTRS_VARS)
    if not isinstance(found, dict):
        return {}
    return {k: v for k, v in found.items() if isinstance(k, str) and isinstance(v, str)}


class RedisRunAttrs:
    """Run attribute indexes (a base class of :class:`~stores.redis.RedisBackend`)."""

    client: Any
    keys: Keys
    runs: RedisRunStore
    time_ms: Callable[[], int]  # RedisIndexes

    def put_attr_entries(self, run_id: str, attrs: Mapping[str, str], created_ms: float) -> None:
        """Add a run to the index of each of its attributes (before the commit that creates it)."""
        if not attrs:
            return
        pipe = self.client.pipeline(transaction=False)
        for name, value in attrs.items():
            pipe.zadd(self.keys.by_attr(name, value), {run_id: created_ms}, nx=True)
        pipe.execute()

    def count_attr_entries(self, name: str, value: str) -> int:
        """Entries of one attribute index (ZCARD; it may hold entries a listing would drop)."""
        return int(self.client.zcard(self.keys.by_attr(name, value)))

    def runs_by_attrs(self, attrs: Mapping[str, str], *, keep: Callable[[RunState], bool] | None = None,
                      limit: int = 100) -> list[RunState]:
        """The runs started with every attribute of ``attrs`` (name -> stored text) that ``keep``
        accepts, newest created first, at most ``limit``.

        One index is read by range: the smallest (``ZCARD``, one round trip) when several are
        given. The runs of each page of ids are loaded in one round trip and filtered by their
        own ``vars["_attrs"]`` (so an entry too many is never listed) and by ``keep``. Entries
        that can never be right are dropped from that index once the listing is done.
        """
        if not attrs or limit <= 0:
            return []
        wanted = dict(attrs)
        name, value = next(iter(wanted.items()))
        if len(wanted) > 1:
            pipe = self.client.pipeline(transaction=False)
            for n, v in wanted.items():
                pipe.zcard(self.keys.by_attr(n, v))
            sizes = pipe.execute()
            name, value = min(zip(wanted.items(), sizes), key=lambda pair: int(pair[1]))[0]
        key = self.keys.by_attr(name, value)
        out: list[RunState] = []
        stale: list[str] = []
        now_ms: int | None = None
        start = 0
        while len(out) < limit:
            page = self.client.zrevrange(key, start, start + _PAGE - 1, withscores=True)
            if not page:
                break
            start += len(page)
            ids = [member.decode() for member, _score in page]
            found = {run.run_id: run for run in self.runs.load_many(ids)}
            for rid, (_member, score) in zip(ids, page):
                run = found.get(rid)
                if run is None:
                    if now_ms is None:
                        now_ms = self.time_ms()
                    if score < now_ms - ORPHAN_GRACE_MS:
                        stale.append(rid)
                    continue
                have = attrs_of(run)
                if have.get(name) != value:
                    stale.append(rid)  # the run exists and never had it: it never will
                    continue
                if any(have.get(n) != v for n, v in wanted.items()) or (keep is not None and not keep(run)):
                    continue
                out.append(run)
                if len(out) == limit:
                    break
        if stale:  # after the walk, so that no page shifts under it
            self.client.zrem(key, *stale)
        return out
