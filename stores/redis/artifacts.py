"""Artifacts in Redis: metadata and (small) content in one hash, big content in another store.

Layout (``docs/redis-layout.md``, section "Snapshots and artifacts")::

    ar:art:<id>               HASH  m: msgpack metadata, r: run id (when it has one),
                                    c: the bytes (inline)  or  x: the id of the bytes in large_store
    ar:idx:art:created        ZSET  artifact id -> created_at (epoch µs)
    ar:idx:art:run:<run_id>   SET   ids of the artifacts stored with one run id

Content larger than ``inline_limit_bytes`` goes to ``large_store`` (any ``ArtifactStore``,
e.g. ``stores.FileArtifactStore``) when one is given, under a fresh id per write; Redis keeps
the metadata and that id. Without a large store, content is kept inline up to
``max_value_bytes`` and refused above it (:class:`~stores.redis.codec.ValueTooLarge`,
nothing written).

Redis is the truth about what exists. A store writes the large content first, then the hash
and indexes in one MULTI/EXEC, then removes the content the hash pointed at before; a delete
removes the hash first, then the large content. A crash in between can leave unreferenced
content in the large store (never visible through this store), never a pointer to nothing.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from typing import Any

from runtime.artifacts import Artifact, ArtifactMetadata, ArtifactStore, ArtifactStoreBase, validate_artifact_id
from runtime.errors import CorruptRecordError, StoreError

from .codec import DEFAULT_MAX_VALUE_BYTES, ValueTooLarge, decode
from .keys import Keys
from .snapshots import check_bytes_client, created_score, pack, paged, text_of, watched

__all__ = ["RedisArtifactStore"]

logger = logging.getLogger(__name__)

#: Content above this many bytes goes to the large store, when there is one.
DEFAULT_INLINE_LIMIT_BYTES = 1024 * 1024
#: Times ``load`` follows a pointer that moved while it read the large store.
_LOAD_TRIES = 5


class RedisArtifactStore(ArtifactStoreBase):
    """An ``ArtifactStore`` in Redis (see the module docstring for the keys and the large store).

    ``client`` must be a redis-py client built with ``decode_responses=False``.
    """

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "ar",
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        large_store: ArtifactStore | None = None,
        inline_limit_bytes: int = DEFAULT_INLINE_LIMIT_BYTES,
    ) -> None:
        if max_value_bytes <= 0:
            raise ValueError(f"max_value_bytes must be positive, got {max_value_bytes}")
        if inline_limit_bytes < 0:
            raise ValueError(f"inline_limit_bytes must not be negative, got {inline_limit_bytes}")
        self.client: Any = check_bytes_client(client)
        self.keys = Keys(prefix)
        self.max_value_bytes = max_value_bytes
        self.large_store = large_store
        self.inline_limit_bytes = inline_limit_bytes

    # -- writing ---------------------------------------------------------------------------------

    def _write(self, data: bytes, meta: ArtifactMetadata, meta_json: str) -> None:
        aid = meta.artifact_id
        # Through JSON, as the other stores keep it: the metadata loads back the same everywhere.
        meta_packed = pack(json.loads(meta_json), what=f"metadata of artifact {aid}", limit=self.max_value_bytes)
        large = self.large_store
        external = large is not None and len(data) > min(self.inline_limit_bytes, self.max_value_bytes)
        if not external and len(data) > self.max_value_bytes:
            raise ValueTooLarge(what=f"content of artifact {aid} (no large_store is configured to hold it)",
                                size=len(data), limit=self.max_value_bytes)
        blob_id: str | None = None
        if external:
            assert large is not None
            # A fresh id per write: readers of the previous version keep finding its bytes
            # until the hash points elsewhere.
            blob_id = f"{aid}_{os.urandom(8).hex()}"
            large.store(data, content_type=meta.content_type, artifact_id=blob_id, tags={"redis_artifact": aid})

        k = self.keys
        key = k.artifact(aid)
        fields: dict[str, bytes | str] = {"m": meta_packed}
        if blob_id is not None:
            fields["x"] = blob_id
        else:
            fields["c"] = data
        if meta.run_id is not None:
            fields["r"] = meta.run_id
        score = created_score(meta.created_at)

        def read(pipe: Any) -> tuple[str | None, str | None]:
            old_run, old_blob = pipe.hmget(key, "r", "x")
            return text_of(old_run), text_of(old_blob)

        def write(pipe: Any, old: tuple[str | None, str | None]) -> bool:
            old_run = old[0]
            pipe.delete(key)
            pipe.hset(key, mapping=fields)
            pipe.zadd(k.artifacts_by_created(), {aid: score})
            if old_run is not None and old_run != meta.run_id:
                pipe.srem(k.artifacts_of_run(old_run), aid)
            if meta.run_id is not None:
                pipe.sadd(k.artifacts_of_run(meta.run_id), aid)
            return True

        try:
            _, old_blob = watched(self.client, key, read, write)
        except BaseException:
            if blob_id is not None:
                self._drop_blob(blob_id, key)
            raise
        if old_blob is not None and old_blob != blob_id:
            self._drop_blob(old_blob, key)

    def _drop_blob(self, blob_id: str, key: str) -> None:
        """Remove content no hash points at any more (best effort: an orphan is harmless)."""
        if self.large_store is None:
            logger.warning("Redis key %s pointed at %r in a large store, but none is configured to remove it",
                           key, blob_id)
            return
        try:
            self.large_store.delete(blob_id)
        except Exception as exc:  # the hash is already right; leftover content is only wasted space
            logger.warning("Could not remove the large content %r of Redis key %s: %s", blob_id, key, exc)

    def delete(self, artifact_id: str) -> bool:
        """See ``ArtifactStore.delete``; the hash and its index entries go in one MULTI/EXEC."""
        return self._delete(artifact_id, only_run=None)

    def _delete(self, artifact_id: str, *, only_run: str | None) -> bool:
        validate_artifact_id(artifact_id)
        k = self.keys
        key = k.artifact(artifact_id)

        def read(pipe: Any) -> tuple[bool, str | None, str | None]:
            meta, run, blob = pipe.hmget(key, "m", "r", "x")
            existed = meta is not None or bool(pipe.exists(key))
            return existed, text_of(run), text_of(blob)

        def write(pipe: Any, seen: tuple[bool, str | None, str | None]) -> bool:
            existed, run, _ = seen
            if not existed or (only_run is not None and run != only_run):
                return False
            pipe.delete(key)
            pipe.zrem(k.artifacts_by_created(), artifact_id)
            if run is not None:
                pipe.srem(k.artifacts_of_run(run), artifact_id)
            return True

        existed, run, blob = watched(self.client, key, read, write)
        if not existed or (only_run is not None and run != only_run):
            return False
        if blob is not None:
            self._drop_blob(blob, key)
        return True

    def delete_by_run(self, run_id: str) -> int:
        """See ``ArtifactStore.delete_by_run``; reads the run's set, deletes each artifact still of that run.

        An artifact whose metadata no longer decodes is deleted too: the run it belongs to is
        known from its hash's ``r`` field, which does not need the metadata.
        """
        ids = sorted(m.decode("utf-8", "replace") for m in self.client.smembers(self.keys.artifacts_of_run(run_id)))
        return sum(1 for aid in ids if self._delete(aid, only_run=run_id))

    # -- reading ---------------------------------------------------------------------------------

    def load(self, artifact_id: str) -> Artifact | None:
        """See ``ArtifactStore.load``; ``CorruptRecordError`` names the Redis key (or the large store's file)."""
        validate_artifact_id(artifact_id)
        key = self.keys.artifact(artifact_id)
        raw_meta, content, raw_run, raw_blob = self.client.hmget(key, "m", "c", "r", "x")
        for _ in range(_LOAD_TRIES):
            if raw_meta is None:
                return self._absent(key, raw_run)
            meta = self._decode_meta(key, artifact_id, raw_meta, text_of(raw_run))
            blob_id = text_of(raw_blob)
            if blob_id is None:
                if content is None:
                    raise CorruptRecordError(location=f"Redis key {key}", run_id=meta.run_id,
                                             reason="neither inline content (c) nor a large-store id (x)")
                return Artifact(meta, self._sized(key, meta, content, "field c"))
            if self.large_store is None:
                raise StoreError(f"The content of artifact {artifact_id} lives in a large store ({blob_id!r}, "
                                 f"Redis key {key}), but this RedisArtifactStore has no large_store configured")
            found = self.large_store.load(blob_id)
            if found is not None:
                return Artifact(meta, self._sized(key, meta, found.content, f"large-store content {blob_id!r}"))
            # Replaced or deleted while we read: follow the hash again.
            raw_meta, content, raw_run, raw_blob = self.client.hmget(key, "m", "c", "r", "x")
            if raw_blob is not None and text_of(raw_blob) == blob_id:
                raise CorruptRecordError(location=f"Redis key {key} field x", run_id=meta.run_id,
                                         reason=f"points at {blob_id!r}, which the large store does not hold")
        raise StoreError(f"Artifact {artifact_id} (Redis key {key}) kept changing while it was read; try again")

    def get_metadata(self, artifact_id: str) -> ArtifactMetadata | None:
        """See ``ArtifactStore.get_metadata`` (one HMGET; the content is not read)."""
        validate_artifact_id(artifact_id)
        key = self.keys.artifact(artifact_id)
        raw_meta, raw_run = self.client.hmget(key, "m", "r")
        if raw_meta is None:
            return self._absent(key, raw_run)
        return self._decode_meta(key, artifact_id, raw_meta, text_of(raw_run))

    def exists(self, artifact_id: str) -> bool:
        """See ``ArtifactStore.exists`` (the hash exists; the large store is not asked)."""
        validate_artifact_id(artifact_id)
        return bool(self.client.exists(self.keys.artifact(artifact_id)))

    def list_by_run(self, run_id: str) -> list[ArtifactMetadata]:
        """See ``ArtifactStore.list_by_run`` (the run's set; newest first, though none is promised)."""
        return self._newest_first(self._metas(self._run_ids(run_id)))

    def search(
        self,
        *,
        run_id: str | None = None,
        content_type: str | None = None,
        tags: dict[str, str] | None = None,
        limit: int = 1000,
    ) -> list[ArtifactMetadata]:
        """See ``ArtifactStore.search``; unreadable metadata is skipped with a warning.

        With ``run_id`` the run's set is read; otherwise the creation index is walked newest
        first, a page per round trip, until ``limit`` artifacts match.
        """
        if limit <= 0:
            return []
        wanted = (tags or {}).items()

        def match(m: ArtifactMetadata) -> bool:
            return (
                (run_id is None or m.run_id == run_id)
                and (content_type is None or m.content_type == content_type)
                and all(m.tags.get(key) == value for key, value in wanted)
            )

        if run_id is not None:
            return self._newest_first([m for m in self._metas(self._run_ids(run_id)) if match(m)])[:limit]
        found: list[ArtifactMetadata] = []
        for ids in paged(self.client, self.keys.artifacts_by_created()):
            found += [m for m in self._metas(ids) if match(m)]
            if len(found) >= limit:
                break
        return self._newest_first(found)[:limit]

    def _iter_metadata(self) -> Iterable[ArtifactMetadata]:
        for ids in paged(self.client, self.keys.artifacts_by_created()):
            yield from self._metas(ids)

    # -- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _absent(key: str, raw_run: bytes | None) -> None:
        if raw_run is not None:  # our writes always set m with r: a hash without m is damaged
            raise CorruptRecordError(location=f"Redis key {key}", run_id=text_of(raw_run), reason="no field m")
        return None

    def _decode_meta(self, key: str, artifact_id: str, raw: bytes, run_id: str | None) -> ArtifactMetadata:
        where = f"Redis key {key} field m"
        data = decode(raw, key=f"{key} field m", run_id=run_id, limit=self.max_value_bytes)
        try:
            meta = ArtifactMetadata.from_dict(data)
        except CorruptRecordError as exc:
            raise CorruptRecordError(location=where, reason=exc.reason, run_id=run_id) from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise CorruptRecordError(location=where, reason=str(exc), run_id=run_id) from None
        if meta.artifact_id != artifact_id:
            raise CorruptRecordError(location=where, reason=f"holds artifact_id {meta.artifact_id!r}", run_id=run_id)
        return meta

    @staticmethod
    def _sized(key: str, meta: ArtifactMetadata, content: bytes, what: str) -> bytes:
        if len(content) != meta.size_bytes:
            raise CorruptRecordError(location=f"Redis key {key} ({what})", run_id=meta.run_id,
                                     reason=f"{len(content)} bytes, metadata says {meta.size_bytes}")
        return content

    def _run_ids(self, run_id: str) -> list[str]:
        return sorted(m.decode("utf-8", "replace") for m in self.client.smembers(self.keys.artifacts_of_run(run_id)))

    def _metas(self, ids: list[str]) -> list[ArtifactMetadata]:
        """The readable metadata among ``ids`` (one round trip); absent ones are skipped silently."""
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for aid in ids:
            pipe.hmget(self.keys.artifact(aid), "m", "r")
        out: list[ArtifactMetadata] = []
        for aid, (raw, run) in zip(ids, pipe.execute()):
            key = self.keys.artifact(aid)
            try:
                if raw is None:
                    self._absent(key, run)
                    continue  # deleted while we listed
                out.append(self._decode_meta(key, aid, raw, text_of(run)))
            except CorruptRecordError as exc:
                logger.warning("Skipping unreadable artifact metadata in Redis key %s: %s", key, exc)
        return out

    @staticmethod
    def _newest_first(metas: list[ArtifactMetadata]) -> list[ArtifactMetadata]:
        # Stable: metadata paged from the creation index keeps its order on equal times.
        return sorted(metas, key=lambda m: created_score(m.created_at), reverse=True)
