"""Run state and ledger in Redis: one atomic commit per step, indexes instead of scans.

:class:`RedisBackend` owns the client, the key names, the commit script and a small cache
of what this process last read or wrote of each run (its version, chain head and index
entries). :class:`RedisRunStore` and :class:`RedisLedgerStore` are the two store
interfaces the kernel knows, as views of one backend; the in-process ``Runtime`` sees
that they share a backend and commits state and records together.
"""

from __future__ import annotations

import builtins
import json
import threading
from importlib import resources
from typing import Any, NamedTuple

import redis

from runtime import RunAlreadyExists, RunState, RunStatus, StepRecord, VersionConflict, WaitReason
from runtime._json import epoch_ms, new_id, parse_iso
from runtime.chain import compute_record_hash, verify_ledger_chain
from runtime.errors import CorruptRecordError
from runtime.models import validate_run_id

from .codec import decode, encode
from .errors import RedisUnavailable
from .keys import Keys
from .settings import RedisSettings, connect, mask_url

__all__ = ["RedisBackend", "RedisRunStore", "RedisLedgerStore"]

#: Largest value (state, record, result) stored or read, in bytes.
DEFAULT_MAX_VALUE_BYTES = 16 * 1024 * 1024
#: Approximate length the global events stream is capped at (XADD MAXLEN ~).
DEFAULT_EVENTS_MAXLEN = 100_000
#: Characters of traceback kept with a run's last failure (the end is kept).
LAST_FAILURE_MAX_CHARS = 8000
#: Runs whose version and head this process remembers; beyond it, a save reads them first.
DEFAULT_CACHE_SIZE = 50_000
#: Index entries fetched per round trip when a filtered listing pages through an index.
_PAGE = 200

_LUA = resources.files(__package__).joinpath("lua")
_COMMIT_LUA = _LUA.joinpath("commit.lua").read_text(encoding="utf-8")
_APPEND_LUA = _LUA.joinpath("append.lua").read_text(encoding="utf-8")
_INDEX_LUA = _LUA.joinpath("index.lua").read_text(encoding="utf-8")
_CLAIM_LUA = _LUA.joinpath("claim.lua").read_text(encoding="utf-8")
_FAILURE_LUA = _LUA.joinpath("failure.lua").read_text(encoding="utf-8")
_STATUSES = ("running", "waiting", "completed", "failed", "cancelled")
_REASONS = ("event", "until", "user", "job", "subworkflow")


def _describe(client: Any) -> str:
    """The masked address of a client's server, for error messages."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    if kwargs.get("path"):
        return mask_url(f"unix://{kwargs['path']}")
    return mask_url(f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}")


#: Field order of a stored ledger record, after the format tag; ``run_id`` is left out
#: (the stream's key names the run). Arrays instead of maps halve a record's size, which
#: matters most for the short ledgers of waiting runs.
_RECORD_FIELDS = ("step_id", "node_id", "status", "effect", "result", "error", "started_at", "ended_at",
                  "actor_id", "session_id", "attempt", "idempotency_key", "prev_hash", "record_hash", "signature")
#: Format tag of a stored record (the first array item), so the format can change later.
_RECORD_FORMAT = 1


def _pack_record(data: dict[str, Any]) -> list[Any]:
    return [_RECORD_FORMAT, *(data[f] for f in _RECORD_FIELDS)]


def _unpack_record(value: Any, run_id: str, where: str) -> dict[str, Any]:
    if isinstance(value, list) and value and value[0] == _RECORD_FORMAT and len(value) == len(_RECORD_FIELDS) + 1:
        record = dict(zip(_RECORD_FIELDS, value[1:]))
        return {"run_id": run_id, **record}
    raise CorruptRecordError(location=f"Redis key {where}", run_id=run_id,
                             reason=f"not a ledger record of format {_RECORD_FORMAT}")


class _Index(NamedTuple):
    """The index entries of one run state (what the commit script adds and removes)."""

    status: str
    workflow_id: str
    reason: str
    wait_key: str
    until_ms: str
    parent_run_id: str


def _index_of(run: RunState) -> _Index:
    status = RunStatus(run.status)._value_
    w = run.waiting if status == "waiting" else None
    reason = WaitReason(w.reason)._value_ if w is not None else ""
    until = str(epoch_ms(w.until)) if w is not None and w.until and reason == "until" else ""
    return _Index(status, run.workflow_id, reason, (w.wait_key or "") if w is not None else "", until,
                  run.parent_run_id or "")


class _Known(NamedTuple):
    version: int
    head: str
    entries: _Index


class RedisBackend:
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
        self._commit_script = client.register_script(_COMMIT_LUA)
        self._append_script = client.register_script(_APPEND_LUA)
        self._index_script = client.register_script(_INDEX_LUA)
        self._claim_script = client.register_script(_CLAIM_LUA)
        self._set_failure_script = client.register_script(_FAILURE_LUA)
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

    def _remember(self, run_id: str, known: _Known) -> None:
        cache = self._known
        if len(cache) >= self._cache_size and run_id not in cache:
            del cache[next(iter(cache))]  # the oldest entry (dicts keep insertion order)
        cache[run_id] = known

    def _forget(self, run_id: str) -> None:
        self._known.pop(run_id, None)

    # -- reading ---------------------------------------------------------------------------------

    def _decode_state(self, run_id: str, raw: bytes) -> RunState:
        key = self.keys.run(run_id)
        data = decode(raw, key=f"{key} field s", run_id=run_id, limit=self.max_value_bytes)
        try:
            return RunState.from_dict(data)
        except Exception as exc:
            raise CorruptRecordError(location=f"Redis key {key} field s (run {run_id})", run_id=run_id,
                                     reason=str(exc)) from None

    def load_versioned(self, run_id: str) -> tuple[RunState, int] | None:
        """The stored state and its version, or None; remembers both for the next commit."""
        raw, version, head = self.client.hmget(self.keys.run(validate_run_id(run_id)), "s", "v", "h")
        if raw is None:
            return None
        run = self._decode_state(run_id, raw)
        v = int(version or 0)
        self._remember(run_id, _Known(v, (head or b"").decode(), _index_of(run)))
        return run, v

    def load_for_driver(self, run_id: str) -> tuple[RunState, int, dict[str, Any] | None, int] | None:
        """The state, its version, its dispatch (what it expects next, or None) and the Redis
        clock in epoch ms, in one round trip; None when the run does not exist."""
        k = self.keys.run(validate_run_id(run_id))
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(k, "s", "v", "h", "d")
        pipe.time()
        (raw, version, head, dispatch), (sec, usec) = pipe.execute()
        now_ms = int(sec) * 1000 + int(usec) // 1000
        if raw is None:
            return None
        run = self._decode_state(run_id, raw)
        v = int(version or 0)
        self._remember(run_id, _Known(v, (head or b"").decode(), _index_of(run)))
        d = decode(dispatch, key=f"{k} field d", run_id=run_id, limit=self.max_value_bytes) if dispatch else None
        if d is not None and not isinstance(d, dict):
            raise CorruptRecordError(location=f"Redis key {k} field d", run_id=run_id, reason="not a map")
        return run, v, d, now_ms

    def time_ms(self) -> int:
        """The Redis server's clock in epoch ms (wake times are judged by it, not by ours)."""
        sec, usec = self.client.time()
        return int(sec) * 1000 + int(usec) // 1000

    def claim_due(self, key: str, *, limit: int, hold_ms: int) -> tuple[int, list[str]]:
        """Claim up to ``limit`` members of the sorted set ``key`` (timers or leases) whose score
        is due by the Redis clock, pushing each score ``hold_ms`` ahead; (now in ms, ids)."""
        now, *ids = self._claim_script(keys=[key], args=[int(limit), int(hold_ms)])
        return int(now), [i.decode() for i in ids]

    def renew_lease(self, run_id: str, lease_ms: int, now_ms: int | None = None) -> None:
        """Push the lease of a run that holds one to ``lease_ms`` from now (nothing if it holds none)."""
        now = self.time_ms() if now_ms is None else now_ms
        self.client.zadd(self.keys.leases(), {validate_run_id(run_id): now + int(lease_ms)}, xx=True)

    def clear_dispatch(self, run_id: str) -> None:
        """Remove the dispatch and the lease of a run (after its last follow-up is done)."""
        rid = validate_run_id(run_id)
        # Two keys in two slots on Cluster: not a transaction. A lease left without a dispatch
        # is dropped by the next sweep.
        pipe = self.client.pipeline(transaction=False)
        pipe.hdel(self.keys.run(rid), "d")
        pipe.zrem(self.keys.leases(), rid)
        pipe.execute()

    def set_last_failure(self, run_id: str, failure: dict[str, Any]) -> None:
        """Keep the newest failure of a run (a raising node or effect handler, with its
        traceback) in field ``f`` of its run hash: outside the hash-chained ledger, replaced by
        the next failure, capped at ``LAST_FAILURE_MAX_CHARS`` of traceback."""
        tb = failure.get("traceback")
        if isinstance(tb, str) and len(tb) > LAST_FAILURE_MAX_CHARS:
            # The end of a traceback (the raising frame and the message) is what says most.
            failure = {**failure, "traceback": "...(cut)...\n" + tb[-LAST_FAILURE_MAX_CHARS:]}
        rid = validate_run_id(run_id)
        raw = json.dumps(failure, ensure_ascii=False, default=str)
        # Only a run that exists gets the field (HSET alone would create a hash with no state).
        self._set_failure_script(keys=[self.keys.run(rid)], args=[raw])

    def last_failure(self, run_id: str) -> dict[str, Any] | None:
        """The newest failure kept by :meth:`set_last_failure`, or None."""
        raw = self.client.hget(self.keys.run(validate_run_id(run_id)), "f")
        if not raw:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def _load_many(self, run_ids: list[str]) -> list[RunState]:
        if not run_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for rid in run_ids:
            pipe.hget(self.keys.run(rid), "s")
        out = []
        for rid, raw in zip(run_ids, pipe.execute()):
            if raw is not None:
                out.append(self._decode_state(rid, raw))
        return out

    # -- writing ---------------------------------------------------------------------------------

    def _chain(self, records: list[StepRecord], head: str) -> tuple[list[bytes], list[bytes | str], str]:
        """Hash-chain ``records`` after ``head`` (set in place) and encode them; also the
        (idempotency key, result) pairs they make reusable, and the new head."""
        limit = self.max_value_bytes
        encoded: list[bytes] = []
        results: list[bytes | str] = []
        prev = head or None
        for record in records:
            record.prev_hash = prev
            data = record.to_dict()
            record.record_hash = data["record_hash"] = compute_record_hash(record=data, prev_hash=prev)
            if self.signer is not None:  # the signature is not part of the hash
                record.signature = data["signature"] = self.signer.sign(data["actor_id"], record.record_hash)
            prev = record.record_hash
            encoded.append(encode(_pack_record(data), what="ledger record", limit=limit))
            if data["status"] == "completed" and data["idempotency_key"] and data["result"] is not None:
                results += [data["idempotency_key"], encode(data["result"], what="effect result", limit=limit)]
        return encoded, results, prev or ""

    def _call(self, script: Any, rid: str, keys: list[str], argv: list[Any], records: list[StepRecord]) -> Any:
        try:
            # A lost reply makes redis-py send the call again; the token makes that a no-op.
            return script(keys=keys, args=argv)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._forget(rid)
            for record in records:
                record.prev_hash = record.record_hash = None
            raise RedisUnavailable(url=_describe(self.client), reason=f"{type(exc).__name__} during a write to "
                                   f"run {rid}; all of it or none of it was written") from None

    def _refused(self, rid: str, code: int, value: Any, known: _Known | None, records: list[StepRecord]) -> None:
        self._forget(rid)
        for record in records:  # they were not written: leave them as they came
            record.prev_hash = record.record_hash = None
        if code == 3:
            raise RunAlreadyExists(rid)
        actual = int(value) if code == 0 else None
        raise VersionConflict(run_id=rid, expected_version=known.version if known else -1,
                              actual_version=actual if actual is None or actual >= 0 else None)

    def _head(self, rid: str) -> tuple[_Known | None, str]:
        known = self._known.get(rid)
        if known is not None:
            return known, known.head
        head_raw = self.client.hget(self.keys.run(rid), "h")
        return None, (head_raw or b"").decode()

    def append(self, records: list[StepRecord], *, run_id: str, lookup_key: str | None = None,
               dispatch: dict[str, Any] | None = None) -> Any:
        """Chain and append ``records`` to a run's ledger without touching its state.

        With ``lookup_key``, a result already recorded under that idempotency key is
        returned instead, and nothing is appended (one round trip for both). Returns None
        after an append. :class:`VersionConflict` if the chain head moved. ``dispatch``
        replaces the run's dispatch field in the same call.
        """
        rid = validate_run_id(run_id)
        known, head = self._head(rid)
        encoded, results, new_head = self._chain(records, head)
        k = self.keys
        packed = encode(dispatch, what="dispatch", limit=self.max_value_bytes) if dispatch is not None else ""
        argv: list[Any] = [head, new_head, new_id()[:23], lookup_key or "", packed, len(encoded), *encoded,
                           len(results) // 2, *results]
        code, value = self._call(self._append_script, rid, [k.run(rid), k.ledger(rid), k.results(rid)], argv,
                                 records)
        if code == 4:
            for record in records:
                record.prev_hash = record.record_hash = None
            return decode(value, key=f"{k.results(rid)} field {lookup_key}", run_id=rid, limit=self.max_value_bytes)
        if code != 1:
            self._refused(rid, code, value, known, records)
        if known is not None:
            self._remember(rid, known._replace(head=new_head))
        return None

    def commit(
        self,
        run: RunState,
        records: list[StepRecord],
        *,
        expected_version: int | None = None,
        create: bool = False,
        dispatch: dict[str, Any] | None = None,
        lease_ms: int | None = None,
    ) -> int:
        """Write ``run`` and append ``records`` to its ledger in one atomic script call.

        The version checked is ``expected_version``, else the one this thread last read or
        wrote for the run through this backend. The records are chained here (``prev_hash``/``record_hash`` set in
        place) against the stored head; the script refuses the commit if the head or version
        moved: :class:`VersionConflict`, nothing written. Returns the new version.

        ``dispatch`` (a small JSON-able dict, kept in the run hash) says what the run expects
        next; ``lease_ms`` puts the run in the lease index until that many milliseconds from
        now by the Redis clock. Without them the commit removes both (the Celery driver sets
        them; ``workers/engine.py`` says what they hold).
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
        encoded, results, new_head = self._chain(records, head)

        k = self.keys
        state = encode(run.to_dict(), what="run", limit=self.max_value_bytes)
        new = _index_of(run)
        old = known.entries if known is not None else _Index("", "", "", "", "", "")
        if create:
            expected = "new"
        else:
            assert known is not None
            expected = str(expected_version if expected_version is not None else known.version)
        # Microseconds, not ms: runs updated within one millisecond must still sort.
        updated = str(int(parse_iso(run.updated_at, field="updated_at").timestamp() * 1_000_000))
        lease = "" if lease_ms is None else str(max(0, int(lease_ms)))
        keys = [
            k.run(rid), k.ledger(rid), k.results(rid), k.by_updated(), k.by_workflow(new.workflow_id or "-"),
            k.by_status(old.status or "-"), k.by_status(new.status or "-"),
            k.by_wait_reason(old.reason or "-"), k.by_wait_reason(new.reason or "-"),
            k.waiting_on(old.wait_key), k.waiting_on(new.wait_key), k.timers(),
            k.children(new.parent_run_id or rid), k.events(), k.leases(),
        ]
        argv: list[Any] = [
            "run" if self.cluster else "all", expected, head, rid, state, updated, new.status, old.status,
            new.reason, old.reason, new.wait_key, old.wait_key, new.until_ms, "1" if new.parent_run_id else "0",
            self.events_maxlen,
            new_head or head, new_id()[:23],
            encode(dispatch, what="dispatch", limit=self.max_value_bytes) if dispatch is not None else "", lease,
            len(encoded), *encoded, len(results) // 2, *results,
        ]
        code, value = self._call(self._commit_script, rid, keys[:3] if self.cluster else keys, argv, records)
        if code != 1:
            self._refused(rid, code, value, known, records)
        self._remember(rid, _Known(int(value), new_head or head, new))
        if self.cluster:
            # The second step, in the index slot. If this process dies before it, the run's
            # next commit puts every index right again (index.lua rebuilds its entries).
            self._call(self._index_script, rid, [
                k.by_updated(), k.by_workflow(new.workflow_id or "-"), *(k.by_status(s) for s in _STATUSES),
                *(k.by_wait_reason(r) for r in _REASONS), k.waiting_on(old.wait_key), k.waiting_on(new.wait_key),
                k.timers(), k.children(new.parent_run_id or rid), k.events(), k.leases(),
            ], [rid, updated, new.status, new.reason, old.wait_key, new.wait_key, new.until_ms,
                "1" if new.parent_run_id else "0", self.events_maxlen, int(value), lease], [])
        return int(value)

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


class RedisRunStore:
    """The run-store view of a :class:`RedisBackend` (``RunStore`` and ``QueryableRunStore``)."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend

    @property
    def ledger(self) -> RedisLedgerStore:
        """The ledger committed together with this store's states."""
        return self.backend.ledger

    def save(self, run: RunState) -> None:
        self.backend.commit(run, [])

    def create(self, run: RunState) -> None:
        self.backend.commit(run, [], create=True)

    def commit(self, run: RunState, records: list[StepRecord]) -> None:
        """Save ``run`` and append ``records`` atomically, checking the version last seen."""
        self.backend.commit(run, records)

    def load(self, run_id: str) -> RunState | None:
        found = self.backend.load_versioned(run_id)
        return found[0] if found else None

    def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        wait_reason: WaitReason | None = None,
        workflow_id: str | None = None,
        limit: int = 100,
    ) -> list[RunState]:
        k = self.backend.keys
        st = RunStatus(status)._value_ if status is not None else None
        wr = WaitReason(wait_reason)._value_ if wait_reason is not None else None
        if wr is not None:
            index = k.by_wait_reason(wr)
        elif st is not None:
            index = k.by_status(st)
        elif workflow_id is not None:
            index = k.by_workflow(workflow_id)
        else:
            index = k.by_updated()
        out: list[RunState] = []
        start = 0
        client = self.backend.client
        while len(out) < limit:
            ids = [i.decode() for i in client.zrevrange(index, start, start + _PAGE - 1)]
            if not ids:
                break
            start += len(ids)
            for run in self.backend._load_many(ids):
                if st is not None and RunStatus(run.status)._value_ != st:
                    continue
                if workflow_id is not None and run.workflow_id != workflow_id:
                    continue
                if wr is not None and (run.waiting is None or WaitReason(run.waiting.reason)._value_ != wr):
                    continue
                out.append(run)
        return out[: max(limit, 0)]

    def list_due_wait_until(self, *, now_iso: str, limit: int = 100) -> list[RunState]:
        now_ms = epoch_ms(now_iso, field="now_iso")
        ids = self.backend.client.zrangebyscore(self.backend.keys.timers(), "-inf", now_ms, start=0, num=limit)
        return self.backend._load_many([i.decode() for i in ids])

    def list_children(self, *, parent_run_id: str, status: RunStatus | None = None) -> list[RunState]:
        ids = sorted(i.decode() for i in self.backend.client.smembers(self.backend.keys.children(parent_run_id)))
        runs = self.backend._load_many(ids)
        st = RunStatus(status)._value_ if status is not None else None
        return [r for r in runs if st is None or RunStatus(r.status)._value_ == st]

    def runs_waiting_on(self, wait_key: str) -> list[str]:
        """Ids of the runs waiting on ``wait_key`` (from the wait-key index, no scan)."""
        return sorted(i.decode() for i in self.backend.client.smembers(self.backend.keys.waiting_on(wait_key)))


class RedisLedgerStore:
    """The ledger view of a :class:`RedisBackend`: one stream per run, always hash-chained."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend

    def append(self, record: StepRecord) -> None:
        """Chain and append one record (the run's state is not touched)."""
        self.backend.append([record], run_id=record.run_id)

    def begin_effect(self, record: StepRecord) -> Any:
        """Append the ``started`` record of an effect attempt, unless a result is already
        recorded under its idempotency key: then return that result and append nothing."""
        return self.backend.append([record], run_id=record.run_id, lookup_key=record.idempotency_key)

    def list(self, run_id: str) -> list[dict[str, Any]]:
        key = self.backend.keys.ledger(validate_run_id(run_id))
        out = []
        for entry_id, fields in self.backend.client.xrange(key):
            raw = fields.get(b"r")
            where = f"{key} entry {entry_id.decode()}"
            if raw is None:
                    raise CorruptRecordError(location=f"Redis key {where}", run_id=run_id, reason="no field r")
            value = decode(raw, key=where, run_id=run_id, limit=self.backend.max_value_bytes)
            out.append(_unpack_record(value, run_id, where))
        return out

    def follow(self, run_id: str, *, last_id: str = "0", block_ms: int = 5000, count: int = 100
               ) -> builtins.list[tuple[str, dict[str, Any]]]:
        """Records appended after stream id ``last_id`` ("0": from the start), waiting up to
        ``block_ms`` for one with a blocking ``XREAD`` (not polling); ``(entry id, record)`` pairs."""
        key = self.backend.keys.ledger(validate_run_id(run_id))
        reply = self.backend.client.xread({key: last_id}, count=count, block=block_ms)
        out = []
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                where = f"{key} entry {entry_id.decode()}"
                raw = fields.get(b"r")
                if raw is None:
                    raise CorruptRecordError(location=f"Redis key {where}", run_id=run_id, reason="no field r")
                value = decode(raw, key=where, run_id=run_id, limit=self.backend.max_value_bytes)
                out.append((entry_id.decode(), _unpack_record(value, run_id, where)))
        return out

    def last_record(self, run_id: str) -> dict[str, Any] | None:
        key = self.backend.keys.ledger(validate_run_id(run_id))
        entries = self.backend.client.xrevrange(key, count=1)
        if not entries:
            return None
        entry_id, fields = entries[0]
        where = f"{key} entry {entry_id.decode()}"
        return _unpack_record(decode(fields[b"r"], key=where, run_id=run_id, limit=self.backend.max_value_bytes),
                              run_id, where)

    def last_record_hash(self, run_id: str) -> str | None:
        return self.chain_head(run_id)

    def chain_head(self, run_id: str) -> str | None:
        """The chain head stored beside the stream (what the next record must link to)."""
        head = self.backend.client.hget(self.backend.keys.run(validate_run_id(run_id)), "h")
        return head.decode() if head else None

    def find_effect_result(self, run_id: str, idempotency_key: str) -> Any:
        key = self.backend.keys.results(run_id)
        raw = self.backend.client.hget(key, idempotency_key)
        if raw is None:
            return None
        return decode(raw, key=f"{key} field {idempotency_key}", run_id=run_id, limit=self.backend.max_value_bytes)

    def verify(self, run_id: str) -> dict[str, Any]:
        """The chain check of the run's records against the stored head."""
        return verify_ledger_chain(self.list(run_id), expected_head=self.chain_head(run_id))
