"""Run state and ledger in Redis: one atomic commit per step, indexes instead of scans.

:class:`RedisBackend` owns the client, the key names, the scripts and a small cache of what
this thread last read or wrote of each run (its version, chain head and index entries). It
loads a run (:meth:`~RedisBackend.load_for_driver`: state, version, dispatch and the Redis
clock in one round trip) and commits it (:meth:`~RedisBackend.commit`: one ``commit.lua``
call, whose KEYS and ARGV are built here, as :class:`CommitKeys` and :class:`CommitArgs`).
What it reads and writes in the cross-run keys (leases, timers, dead letters, events,
counts) is :class:`~stores.redis.indexes.RedisIndexes`, the run attribute indexes are
:class:`~stores.redis.attrs.RedisRunAttrs`; the store views the kernel knows
are :class:`~stores.redis.runs.RedisRunStore` and :class:`~stores.redis.ledger.RedisLedgerStore`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import redis

from runtime import RunState, StepRecord, VersionConflict
from runtime._clock import parse_iso
from runtime._ids import new_id
from runtime.errors import CorruptRecordError, RunAlreadyExists, StaleLease
from runtime.models import validate_run_id

from .argv import AppendArgs, AppendKeys, CommitArgs, CommitKeys
from .attrs import RedisRunAttrs
from .codec import DEFAULT_MAX_VALUE_BYTES, decode, decode_state, encode
from .dispatch import Dispatch
from .entries import _NO_INDEX, _index_of, _Known
from .errors import RedisUnavailable
from .indexes import RedisIndexes
from .keys import Keys
from .ledger import RedisLedgerStore, chain_records
from .runs import RedisRunStore
from .schedules import RedisSchedules
from .scripts import SOURCES, Reply
from .settings import RedisSettings, connect, mask_url
from .stuck import RedisStuck
from .waits import RedisWaits

__all__ = ["RedisBackend", "Loaded", "CommitKeys", "CommitArgs", "AppendKeys", "AppendArgs"]

#: Approximate length the global events stream is capped at (XADD MAXLEN ~).
DEFAULT_EVENTS_MAXLEN = 100_000
#: Runs whose version and head this process remembers; beyond it, a save reads them first.
DEFAULT_CACHE_SIZE = 50_000

_STATUSES = ("running", "waiting", "completed", "failed", "cancelled")
_REASONS = ("event", "until", "user", "job", "subworkflow")


class Loaded(NamedTuple):
    """A run as a driver task reads it (:meth:`RedisBackend.load_for_driver`), in one round trip."""

    run: RunState
    version: int
    #: What the run expects next, or None.
    dispatch: Dispatch | None
    #: The Redis clock, epoch ms (wake times are judged by it).
    now_ms: int
    #: Leases of the dispatch that expired with no commit since (field ``n``; lost deliveries).
    lost: int = 0
    #: The run's fencing token (field ``g``): how many times a lease was granted on it. A message
    #: carrying an older one was sent for an earlier grant.
    token: int = 0
    #: When the lease first expired since the last commit, if the sweep granted it again
    #: since (field ``x``, epoch ms); None otherwise.
    regranted_ms: int | None = None


def _describe(client: Any) -> str:
    """The masked address of a client's server, for error messages."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    if kwargs.get("path"):
        return mask_url(f"unix://{kwargs['path']}")
    return mask_url(f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}")


class RedisBackend(RedisIndexes, RedisStuck, RedisWaits, RedisSchedules, RedisRunAttrs):
    """One Redis connection's view of runs and ledgers under a key prefix."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "ar",
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        events_maxlen: int = DEFAULT_EVENTS_MAXLEN,
        cache_size: int = DEFAULT_CACHE_SIZE,
        cluster: bool = False,
        signer: Any = None,
    ) -> None:
        # redis-py's return types are unions of bytes and str; the client is built with
        # decode_responses=False, so values here are always bytes.
        self.client: Any = client
        #: Redis Cluster: a commit is two calls, the run's slot then the index slot.
        self.cluster = cluster
        self.keys = Keys(prefix, cluster=cluster)
        self.max_value_bytes = max_value_bytes
        #: Signs each record's hash (``stores.signing.LedgerSigner``), or None for unsigned ledgers.
        self.signer = signer
        self.events_maxlen = events_maxlen
        self._cache_size = cache_size
        # What this thread last read or wrote of each run. Per thread, so that two threads
        # sharing a backend are checked against the versions *they* loaded: with one shared
        # cache, a thread that loaded an old version would commit over another's write.
        self._local = threading.local()
        # register_script sends EVALSHA and loads the script again after a NOSCRIPT
        # (a restarted or failed-over server), so the script text crosses the wire once.
        self._commit_script = client.register_script(SOURCES["commit"])
        self._append_script = client.register_script(SOURCES["append"])
        self._index_script = client.register_script(SOURCES["index"])
        self._claim_script = client.register_script(SOURCES["claim"])
        self._set_failure_script = client.register_script(SOURCES["failure"])
        self._fence_script = client.register_script(SOURCES["fence"])
        self.runs = RedisRunStore(self)
        self.ledger = RedisLedgerStore(self)

    @classmethod
    def from_settings(cls, settings: Any = None, *, signer: Any = None) -> RedisBackend:
        """A backend on the Redis that ``settings`` names (``RedisSettings.from_env()`` when
        None; with no URL, the embedded server), with its prefix and value limit."""
        settings = settings if settings is not None else RedisSettings.from_env()
        return cls(connect(settings), prefix=settings.prefix, max_value_bytes=settings.max_value_bytes,
                   cluster=settings.cluster, signer=signer)

    # -- cache -----------------------------------------------------------------------------------

    @property
    def _known(self) -> dict[str, _Known]:
        known: dict[str, _Known] | None = getattr(self._local, "known", None)
        if known is None:
            known = self._local.known = {}
        return known

    def _remember(self, run_id: str, raw: bytes, version: Any, head: bytes | None, fence: Any = None
                  ) -> RunState:
        """Decode a loaded state and remember its version, head, index entries and fencing token."""
        run = decode_state(raw, key=self.keys.run(run_id), run_id=run_id, limit=self.max_value_bytes)
        self._keep(run_id, _Known(int(version or 0), (head or b"").decode(), _index_of(run), int(fence or 0)))
        return run

    def _keep(self, run_id: str, known: _Known) -> None:
        cache = self._known
        if len(cache) >= self._cache_size and run_id not in cache:
            del cache[next(iter(cache))]  # the oldest entry (dicts keep insertion order)
        cache[run_id] = known

    def _forget(self, run_id: str, records: list[StepRecord]) -> None:
        """After a refused or failed write: drop what is known of the run, unchain the records."""
        self._known.pop(run_id, None)
        self.drop_loaded()
        for record in records:  # they were not written: leave them as they came
            record.prev_hash = record.record_hash = None

    # -- reading ---------------------------------------------------------------------------------

    def load_versioned(self, run_id: str) -> tuple[RunState, int] | None:
        """The stored state and its version, or None; remembers both for the next commit."""
        raw, version, head, fence = self.client.hmget(self.keys.run(validate_run_id(run_id)), "s", "v", "h", "g")
        if raw is None:
            return None
        return self._remember(run_id, raw, version, head, fence), int(version or 0)

    def fence_of(self, run_id: str) -> int | None:
        """The fencing token of a run as this thread last loaded it or got it back from its own
        commit (the token to send with the message a commit's lease is for), or None when this
        thread knows nothing of the run."""
        known = self._known.get(run_id)
        return known.fence if known is not None else None

    def load_for_driver(self, run_id: str) -> Loaded | None:
        """The state, its version, its dispatch and the Redis clock in one round trip; None when
        the run does not exist."""
        k = self.keys.run(validate_run_id(run_id))
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(k, "s", "v", "h", "d", "n", "g", "x")
        pipe.time()
        (raw, version, head, wire, lost, fence, expired), (sec, usec) = pipe.execute()
        if raw is None:
            return None
        run = self._remember(run_id, raw, version, head, fence)
        dispatch = None
        if wire:
            try:
                dispatch = Dispatch.from_wire(decode(wire, key=f"{k} field d", run_id=run_id,
                                                     limit=self.max_value_bytes))
            except ValueError as exc:
                raise CorruptRecordError(location=f"Redis key {k} field d", run_id=run_id, reason=str(exc)) from None
        return Loaded(run, int(version or 0), dispatch, int(sec) * 1000 + int(usec) // 1000, int(lost or 0),
                      int(fence or 0), int(expired) if expired else None)

    def take_loaded(self, run_id: str) -> Loaded | None:
        """What :meth:`load_for_driver` would read of ``run_id`` right after this thread's last
        commit of it with ``keep_loaded`` (the state it wrote, decoded again, and the Redis
        clock the script read), once; None when there is none. A task that runs the run's next
        step itself reads it there, saving a round trip; its commit is version-checked as any."""
        kept: Loaded | None = getattr(self._local, "loaded", None)
        if kept is None or kept.run.run_id != run_id:
            return None
        self._local.loaded = None
        return kept

    def drop_loaded(self) -> None:
        """Forget what the last ``keep_loaded`` commit kept (the task that would take it ended)."""
        self._local.loaded = None

    # -- writing ---------------------------------------------------------------------------------

    def _call(self, script: Any, rid: str, keys: Sequence[str], argv: Sequence[Any], records: list[StepRecord]
              ) -> Any:
        try:
            # A lost reply makes redis-py send the call again; the token makes that a no-op.
            return script(keys=keys, args=argv)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._forget(rid, records)
            raise RedisUnavailable(url=_describe(self.client), reason=f"{type(exc).__name__} during a write to "
                                   f"run {rid}; all of it or none of it was written") from None

    def _refused(self, rid: str, code: int, value: Any, known: _Known | None, records: list[StepRecord],
                 fence: int | None = None) -> None:
        self._forget(rid, records)
        if code == Reply.EXISTS:
            raise RunAlreadyExists(rid)
        if code == Reply.STALE:
            raise StaleLease(run_id=rid, token=fence if fence is not None else -1, current=int(value))
        actual = int(value) if code == Reply.CONFLICT else None
        raise VersionConflict(run_id=rid, expected_version=known.version if known else -1,
                              actual_version=actual if actual is None or actual >= 0 else None)

    def _written(self, rid: str, state: bytes, wire: bytes | str, version: int, fence: int, now_ms: int) -> Loaded:
        """What a load would read right after a commit wrote ``state`` and ``wire`` (decoded from
        the same bytes, so that nothing the caller still holds is shared with the next step)."""
        k = self.keys.run(rid)
        run = decode_state(state, key=k, run_id=rid, limit=self.max_value_bytes)
        dispatch = Dispatch.from_wire(decode(wire, key=f"{k} field d", run_id=rid, limit=self.max_value_bytes)
                                      ) if isinstance(wire, bytes) and wire else None
        return Loaded(run, version, dispatch, now_ms, 0, fence, None)

    def _encode_dispatch(self, dispatch: Dispatch | None) -> bytes | str:
        return "" if dispatch is None else encode(dispatch.to_wire(), what="dispatch", limit=self.max_value_bytes)

    def append(self, records: list[StepRecord], *, run_id: str, lookup_key: str | None = None,
               dispatch: Dispatch | None = None, fence: int | None = None) -> Any:
        """Chain and append ``records`` to a run's ledger without touching its state.

        With ``lookup_key``, a result already recorded under that idempotency key is
        returned instead, and nothing is appended (one round trip for both). Returns None
        after an append. :class:`VersionConflict` if the chain head moved. ``dispatch``
        replaces the run's dispatch field in the same call. ``fence``: the fencing token the
        caller holds (:class:`~runtime.errors.StaleLease` when the run's is newer).
        """
        rid = validate_run_id(run_id)
        known = self._known.get(rid)
        head = known.head if known is not None else (self.client.hget(self.keys.run(rid), "h") or b"").decode()
        encoded, results, new_head = chain_records(records, head, signer=self.signer, limit=self.max_value_bytes)
        k = self.keys
        keys = AppendKeys(k.run(rid), k.ledger(rid), k.results(rid))  # in the order of append.lua's header
        args = AppendArgs(head, new_head, new_id()[:23], lookup_key or "", self._encode_dispatch(dispatch),
                          "" if fence is None else str(int(fence)))
        code, value = self._call(self._append_script, rid, keys,
                                 (*args, len(encoded), *encoded, len(results) // 2, *results), records)
        if code == Reply.FOUND:
            for record in records:
                record.prev_hash = record.record_hash = None
            return decode(value, key=f"{keys.results} field {lookup_key}", run_id=rid, limit=self.max_value_bytes)
        if code != Reply.OK:
            self._refused(rid, code, value, known, records, fence)
        if known is not None:
            self._keep(rid, known._replace(head=new_head))
        return None

    def commit(
        self,
        run: RunState,
        records: list[StepRecord],
        *,
        expected_version: int | None = None,
        create: bool = False,
        dispatch: Dispatch | None = None,
        lease_ms: int | None = None,
        fence: int | None = None,
        events: Sequence[Mapping[str, Any]] = (),
        keep_loaded: bool = False,
    ) -> int:
        """Write ``run`` and append ``records`` to its ledger in one atomic script call.

        The version checked is ``expected_version``, else the one this thread last read or
        wrote for the run through this backend. The records are chained here (``prev_hash``/``record_hash`` set in
        place) against the stored head; the script refuses the commit if the head or version
        moved: :class:`VersionConflict`, nothing written. Returns the new version.

        ``dispatch`` says what the run expects next (kept in the run hash); ``lease_ms`` puts
        the run in the lease index until that many milliseconds from now by the Redis clock.
        Without them the commit removes both (the Celery driver sets them; ``workers/engine``).
        A lease is a grant: the run's fencing token goes up by one (:meth:`fence_of` gives it
        after the commit). ``fence`` is the token the writer holds, if it holds a lease:
        :class:`~runtime.errors.StaleLease` when the lease was granted to another since.
        ``events`` (named waits' ``wait.*`` events, ``runtime/waitset.py``) go to the events
        stream in the same call (on Redis Cluster, right after it). ``keep_loaded``: keep what
        was written for this thread's next :meth:`take_loaded` of the run.
        """
        rid = validate_run_id(run.run_id)
        known = self._known.get(rid)
        if not create and known is None:
            # A save with no earlier read in this process: read what is stored first, so
            # the script can move its index entries.
            if self.load_versioned(rid) is None:
                create = True
            known = self._known.get(rid)
        head = known.head if known is not None else ""
        encoded, results, new_head = chain_records(records, head, signer=self.signer, limit=self.max_value_bytes)
        if create:
            expected = "new"
        else:
            assert known is not None
            expected = str(expected_version if expected_version is not None else known.version)
        new = _index_of(run)
        old = known.entries if known is not None else _NO_INDEX
        # Microseconds, not ms: runs updated within one millisecond must still sort.
        updated = str(int(parse_iso(run.updated_at, field="updated_at").timestamp() * 1_000_000))
        lease = "" if lease_ms is None else str(max(0, int(lease_ms)))
        k = self.keys
        # Positional, in the order of commit.lua's header (tests/test_lua_contract.py checks
        # each item by name): keyword arguments would cost a tenth of the commit's own time.
        keys = CommitKeys(
            k.run(rid), k.ledger(rid), k.results(rid), k.by_updated(), k.by_workflow(new.workflow_id or "-"),
            k.by_status(old.status or "-"), k.by_status(new.status or "-"),
            k.by_wait_reason(old.reason or "-"), k.by_wait_reason(new.reason or "-"),
            k.waiting_on(old.wait_key), k.waiting_on(new.wait_key), k.timers(),
            k.children(new.parent_run_id or rid), k.events(), k.leases())
        state, wire = encode(run.to_dict(), what="run", limit=self.max_value_bytes), self._encode_dispatch(dispatch)
        args = CommitArgs(
            "run" if self.cluster else "all", expected, head, rid, state, updated,
            new.status, old.status, new.reason, old.reason, new.wait_key, old.wait_key, new.until_ms,
            "1" if new.parent_run_id else "0", self.events_maxlen, new_head or head, new_id()[:23],
            wire, lease, "" if fence is None else str(int(fence)))
        tail: list[Any] = []
        if events and not self.cluster:
            tail = [len(events)]
            for event in events:
                tail += [event["event"], event.get("wait") or "", json.dumps(event, separators=(",", ":"))]
        reply = self._call(self._commit_script, rid, keys[:3] if self.cluster else keys,
                           (*args, len(encoded), *encoded, len(results) // 2, *results, *tail), records)
        code, value = reply[0], reply[1]
        if code != Reply.OK:
            self._refused(rid, code, value, known, records, fence)
        self._keep(rid, _Known(int(value), new_head or head, new, int(reply[2])))
        # (a reply of three items is a retried call's: what it wrote is not known here)
        self._local.loaded = self._written(rid, state, wire, int(value), int(reply[2]), int(reply[3])
                                           ) if keep_loaded and len(reply) > 3 else None
        if self.cluster:
            # The second step, in the index slot. If this process dies before it, the run's
            # next commit puts every index right again (index.lua rebuilds its entries).
            self._call(self._index_script, rid, [
                keys.updated, keys.workflow, *(k.by_status(s) for s in _STATUSES),
                *(k.by_wait_reason(r) for r in _REASONS), keys.wait_old, keys.wait_new, keys.timers,
                keys.children, keys.events, keys.leases,
            ], [rid, updated, new.status, new.reason, old.wait_key, new.wait_key, new.until_ms, args.has_parent,
                self.events_maxlen, int(value), lease], [])
            if events:
                self.add_events(rid, events)
        return int(value)

    def add_events(self, run_id: str, events: Sequence[Mapping[str, Any]]) -> None:
        """Named waits' events on the events stream, outside a commit (fields ``event``,
        ``run_id``, ``wait``, ``data``: the event as JSON), as the commit writes them."""
        pipe = self.client.pipeline(transaction=False)
        for event in events:
            pipe.xadd(self.keys.events(), {"event": event["event"], "run_id": run_id, "wait": event.get("wait") or "",
                                           "data": json.dumps(event, separators=(",", ":"))},
                      maxlen=self.events_maxlen, approximate=True)
        pipe.execute()
