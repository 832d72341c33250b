"""Snapshots in Redis: one hash per snapshot, a sorted set by creation time, a set per run.

Layout (``docs/redis-layout.md``, section "Snapshots and artifacts")::

    ar:snap:<id>               HASH  d: msgpack of Snapshot.to_dict(), r: its run id
    ar:idx:snap:created        ZSET  snapshot id -> created_at (epoch µs)
    ar:idx:snap:run:<run_id>   SET   ids of the snapshots of one run

Every save and delete is one MULTI/EXEC transaction guarded by WATCH on the snapshot's
hash (the old run id must leave its set), so a reader sees the old snapshot or the new one
and the indexes always agree with the hashes. No SCAN or KEYS: listings walk the indexes.
"""

from __future__ import annotations

import builtins
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import redis

from runtime._clock import parse_iso
from runtime.errors import CorruptRecordError, InvalidTimeError, PayloadNotSerializable, StoreError
from runtime.snapshots import Snapshot, select_snapshots, stamped_snapshot_json, validate_snapshot_id

from .codec import DEFAULT_MAX_VALUE_BYTES, decode, encode
from .keys import Keys

__all__ = ["RedisSnapshotStore"]

logger = logging.getLogger(__name__)

#: Index entries fetched per round trip when a listing pages through an index.
_PAGE = 200
#: Times a WATCHed transaction is retried when another writer touched the key in between.
_MAX_TRIES = 100

_T = TypeVar("_T")


# -- helpers shared with stores/redis/artifacts.py ---------------------------------------------


def check_bytes_client(client: Any) -> Any:
    """``client`` itself; ValueError when it decodes responses (stored values are bytes)."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None) or {}
    if kwargs.get("decode_responses"):
        raise ValueError("The Redis snapshot and artifact stores need a client built with decode_responses=False")
    return client


def created_score(created_at: Any) -> float:
    """The index score of a ``created_at``: epoch microseconds, ``-inf`` when it does not parse.

    Parsed, not compared as text (decision D4); an unreadable time sorts last, as in the
    other stores, instead of failing the write.
    """
    try:
        return float(int(parse_iso(created_at, field="created_at").timestamp() * 1_000_000))
    except (InvalidTimeError, OverflowError, ValueError):
        return float("-inf")


def pack(value: Any, *, what: str, limit: int) -> bytes:
    """msgpack bytes of a JSON-shaped value (``ValueTooLarge`` over ``limit``).

    JSON holds integers of any size, msgpack only 64-bit ones: such a value is refused as
    not serializable here, before anything is written.
    """
    try:
        return encode(value, what=what, limit=limit)
    except PayloadNotSerializable:
        raise
    except (TypeError, OverflowError):  # msgpack's refusal of a value JSON accepts: a huge int
        raise PayloadNotSerializable(path=what, reason="an integer outside the 64-bit range msgpack can hold") from None


def text_of(raw: bytes | None) -> str | None:
    """A stored plain-text field (run id, large-store id) as str."""
    return None if raw is None else raw.decode("utf-8", "replace")


def watched(client: Any, key: str, read: Callable[[Any], _T], write: Callable[[Any, _T], bool]) -> _T:
    """Read ``key`` under WATCH, then queue the writes in MULTI and EXEC them; retried if ``key`` moved.

    ``read(pipe)`` runs in immediate mode and returns what the writes need; ``write(pipe, seen)``
    queues commands and returns False to write nothing. The return value is ``seen``.
    """
    with client.pipeline(transaction=True) as pipe:
        for _ in range(_MAX_TRIES):
            try:
                pipe.watch(key)
                seen = read(pipe)
                pipe.multi()
                if write(pipe, seen):
                    pipe.execute()
                else:
                    pipe.reset()
                return seen
            except redis.WatchError:
                continue
    raise StoreError(f"Redis key {key} kept changing under {_MAX_TRIES} attempts to write it; try again")


def index_page(client: Any, index: str, start: int) -> builtins.list[str]:
    """One page of an index, newest first."""
    return [m.decode("utf-8", "replace") for m in client.zrevrange(index, start, start + _PAGE - 1)]


def paged(client: Any, index: str) -> Iterable[builtins.list[str]]:
    """Pages of a ZSET index, newest first, each id once (entries may move while we page)."""
    seen: set[str] = set()
    start = 0
    while True:
        ids = index_page(client, index, start)
        if not ids:
            return
        start += len(ids)
        fresh = [i for i in ids if i not in seen]
        seen.update(fresh)
        yield fresh


# -- the store ---------------------------------------------------------------------------------


class RedisSnapshotStore:
    """A ``SnapshotStore`` in Redis (see the module docstring for the keys).

    ``client`` must be a redis-py client built with ``decode_responses=False``. Snapshots
    hold what JSON holds, exactly as the in-memory and file stores do: the state is checked
    and normalised through JSON (tuples become lists, ...) and stored as msgpack.
    """

    def __init__(self, client: Any, *, prefix: str = "ar", max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> None:
        if max_value_bytes <= 0:
            raise ValueError(f"max_value_bytes must be positive, got {max_value_bytes}")
        self.client: Any = check_bytes_client(client)
        self.keys = Keys(prefix)
        self.max_value_bytes = max_value_bytes

    def save(self, snapshot: Snapshot) -> None:
        """See ``SnapshotStore.save``; one MULTI/EXEC writes the hash and both indexes."""
        sid = validate_snapshot_id(snapshot.snapshot_id)
        now, text = stamped_snapshot_json(snapshot)  # PayloadNotSerializable before any write
        data = json.loads(text)
        packed = pack(data, what=f"snapshot {sid}", limit=self.max_value_bytes)
        run_id = str(data["run_id"])
        score = created_score(data["created_at"])
        k = self.keys
        key = k.snapshot(sid)

        def write(pipe: Any, old_run: str | None) -> bool:
            pipe.delete(key)
            pipe.hset(key, mapping={"d": packed, "r": run_id})
            pipe.zadd(k.snapshots_by_created(), {sid: score})
            if old_run is not None and old_run != run_id:
                pipe.srem(k.snapshots_of_run(old_run), sid)
            pipe.sadd(k.snapshots_of_run(run_id), sid)
            return True

        watched(self.client, key, lambda pipe: text_of(pipe.hget(key, "r")), write)
        snapshot.updated_at = now

    def load(self, snapshot_id: str) -> Snapshot | None:
        """See ``SnapshotStore.load``; ``CorruptRecordError`` names the Redis key."""
        key = self.keys.snapshot(validate_snapshot_id(snapshot_id))
        raw, run = self.client.hmget(key, "d", "r")
        if raw is None:
            if run is not None:
                raise CorruptRecordError(location=f"Redis key {key}", run_id=text_of(run), reason="no field d")
            return None
        return self._decode(key, raw, text_of(run))

    def delete(self, snapshot_id: str) -> bool:
        """See ``SnapshotStore.delete``; the hash and its index entries go in one MULTI/EXEC."""
        sid = validate_snapshot_id(snapshot_id)
        k = self.keys
        key = k.snapshot(sid)

        def read(pipe: Any) -> tuple[bool, str | None]:
            run = text_of(pipe.hget(key, "r"))
            return (run is not None or bool(pipe.exists(key))), run

        def write(pipe: Any, seen: tuple[bool, str | None]) -> bool:
            existed, run = seen
            pipe.delete(key)
            pipe.zrem(k.snapshots_by_created(), sid)
            if run is not None:
                pipe.srem(k.snapshots_of_run(run), sid)
            return existed

        return watched(self.client, key, read, write)[0]

    def list(
        self,
        *,
        run_id: str | None = None,
        tag: str | None = None,
        query: str | None = None,
        limit: int = 100,
    ) -> builtins.list[Snapshot]:
        """See ``SnapshotStore.list``; unreadable snapshots are skipped with a warning.

        With ``run_id`` the run's set is read; otherwise the creation index is walked newest
        first, a page per round trip, until ``limit`` snapshots match.
        """
        if limit <= 0:
            return []
        if run_id is not None:
            ids = sorted(m.decode("utf-8", "replace") for m in self.client.smembers(self.keys.snapshots_of_run(run_id)))
            return select_snapshots(self._load_many(ids), run_id=run_id, tag=tag, query=query, limit=limit)
        found: builtins.list[Snapshot] = []
        for ids in paged(self.client, self.keys.snapshots_by_created()):
            # Each page comes newest first; the final sort (stable, by parsed time) keeps that order.
            found += select_snapshots(self._load_many(ids), tag=tag, query=query, limit=len(ids))
            if len(found) >= limit:
                break
        return select_snapshots(found, limit=limit)

    # -- reading ---------------------------------------------------------------------------------

    def _decode(self, key: str, raw: bytes, run_id: str | None) -> Snapshot:
        where = f"Redis key {key} field d"
        data = decode(raw, key=f"{key} field d", run_id=run_id, limit=self.max_value_bytes)
        try:
            return Snapshot.from_dict(data)
        except CorruptRecordError as exc:
            raise CorruptRecordError(location=where, reason=exc.reason, run_id=run_id) from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise CorruptRecordError(location=where, reason=str(exc), run_id=run_id) from None

    def _load_many(self, ids: builtins.list[str]) -> builtins.list[Snapshot]:
        """The readable snapshots among ``ids`` (one round trip); absent ones are skipped silently."""
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for sid in ids:
            pipe.hmget(self.keys.snapshot(sid), "d", "r")
        out: builtins.list[Snapshot] = []
        for sid, (raw, run) in zip(ids, pipe.execute()):
            if raw is None:
                continue  # deleted while we listed
            key = self.keys.snapshot(sid)
            try:
                out.append(self._decode(key, raw, text_of(run)))
            except CorruptRecordError as exc:
                logger.warning("Skipping unreadable snapshot in Redis key %s: %s", key, exc)
        return out
