"""Artifacts: content-addressed blobs (LLM outputs, files, large results) kept out of run vars.

A run stores ``artifact_ref(id)`` (``{"$artifact": id}``) in its vars instead of the bytes. The id of
stored bytes is the first 32 hex chars of their SHA-256, so equal bytes share one artifact.

Departure from the reference: ids are validated by every store, in memory too, so code tested
against the in-memory store cannot pass an id that a file or Redis store would refuse.
"""

from __future__ import annotations

import json
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ._clock import epoch_ms, utc_now_iso
from ._hashing import sha256_hex
from ._json import dumps_checked
from .errors import CorruptRecordError, InvalidArtifactId, InvalidTimeError

__all__ = [
    "ArtifactMetadata",
    "Artifact",
    "ArtifactStore",
    "ArtifactStoreBase",
    "InMemoryArtifactStore",
    "compute_artifact_id",
    "validate_artifact_id",
    "artifact_ref",
    "is_artifact_ref",
    "get_artifact_id",
    "resolve_artifact",
]

#: The key marking a dict as a reference to an artifact.
ARTIFACT_REF_KEY = "$artifact"

_ID_RE = re.compile(r"[A-Za-z0-9_-]+")


def compute_artifact_id(content: bytes) -> str:
    """The content address of ``content``: the first 32 hex chars of its SHA-256."""
    return sha256_hex(content)[:32]


def validate_artifact_id(artifact_id: Any) -> None:
    """Raise ``InvalidArtifactId`` unless the id is a non-empty ``[A-Za-z0-9_-]`` string."""
    # fullmatch, not "^...$": "$" would accept a trailing newline.
    if not isinstance(artifact_id, str) or not _ID_RE.fullmatch(artifact_id):
        raise InvalidArtifactId(artifact_id)


@dataclass(frozen=True)
class ArtifactMetadata:
    """What a store knows about one artifact besides its bytes."""

    artifact_id: str
    content_type: str
    size_bytes: int
    created_at: str
    run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The stored shape (JSON-ready)."""
        return {
            "artifact_id": self.artifact_id,
            "content_type": self.content_type,
            "size_bytes": self.size_bytes,
            "created_at": self.created_at,
            "run_id": self.run_id,
            "tags": dict(self.tags),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArtifactMetadata:
        """Rebuild metadata; ``CorruptRecordError`` when a field is missing or of the wrong kind."""
        if not isinstance(data, Mapping):
            raise CorruptRecordError(
                location="artifact metadata", reason=f"expected an object, got {type(data).__name__}"
            )
        try:
            tags = data.get("tags") or {}
            size = data["size_bytes"]
            if not isinstance(tags, dict) or not isinstance(size, int):
                raise CorruptRecordError(location="artifact metadata", reason="bad tags or size_bytes")
            return cls(
                artifact_id=data["artifact_id"],
                content_type=data["content_type"],
                size_bytes=size,
                created_at=data["created_at"],
                run_id=data.get("run_id"),
                tags=dict(tags),
            )
        except KeyError as exc:
            raise CorruptRecordError(location="artifact metadata", reason=f"missing field {exc.args[0]!r}") from None


@dataclass(frozen=True)
class Artifact:
    """Stored bytes with their metadata."""

    metadata: ArtifactMetadata
    content: bytes

    @property
    def artifact_id(self) -> str:
        """The artifact's id."""
        return self.metadata.artifact_id

    @property
    def content_type(self) -> str:
        """The MIME type given when it was stored."""
        return self.metadata.content_type

    def as_text(self, encoding: str = "utf-8") -> str:
        """The content decoded as text."""
        return self.content.decode(encoding)

    def as_json(self) -> Any:
        """The content parsed as JSON."""
        return json.loads(self.as_text())


@runtime_checkable
class ArtifactStore(Protocol):
    """Where artifacts live. Every method taking an id raises ``InvalidArtifactId`` for a bad one."""

    def store(
        self,
        content: bytes,
        *,
        content_type: str = "application/octet-stream",
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
        artifact_id: str | None = None,
    ) -> ArtifactMetadata:
        """Store ``content`` under ``artifact_id`` (default: its content address) and return its metadata.

        Storing under an existing id replaces bytes and metadata (new ``created_at``, ``run_id``, tags).
        A refused call (bad id, non-bytes content, non-JSON tags) stores nothing.
        """

    def load(self, artifact_id: str) -> Artifact | None:
        """The artifact, or None when absent; ``CorruptRecordError`` naming the file/key if unreadable."""

    def get_metadata(self, artifact_id: str) -> ArtifactMetadata | None:
        """The metadata alone (no bytes read), or None when absent."""

    def exists(self, artifact_id: str) -> bool:
        """True if bytes are stored under this id."""

    def delete(self, artifact_id: str) -> bool:
        """Remove bytes and metadata; True if the artifact existed."""

    def list_by_run(self, run_id: str) -> list[ArtifactMetadata]:
        """Metadata of every artifact stored with this ``run_id`` (no order promised)."""

    def list_all(self, *, limit: int = 1000) -> list[ArtifactMetadata]:
        """Metadata of every artifact, newest ``created_at`` first, at most ``limit``."""

    def delete_by_run(self, run_id: str) -> int:
        """Delete every artifact stored with this ``run_id``; the number deleted."""

    def search(
        self,
        *,
        run_id: str | None = None,
        content_type: str | None = None,
        tags: dict[str, str] | None = None,
        limit: int = 1000,
    ) -> list[ArtifactMetadata]:
        """Metadata matching every filter (each given tag equal), newest first, at most ``limit``."""

    def store_text(
        self,
        text: str,
        *,
        content_type: str = "text/plain",
        encoding: str = "utf-8",
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> ArtifactMetadata:
        """Store ``text`` encoded with ``encoding``."""

    def store_json(
        self, data: Any, *, run_id: str | None = None, tags: dict[str, str] | None = None
    ) -> ArtifactMetadata:
        """Store ``data`` as compact UTF-8 JSON (``ensure_ascii=False``), type ``application/json``."""

    def load_text(self, artifact_id: str, *, encoding: str = "utf-8") -> str | None:
        """The content decoded as text, or None when absent."""

    def load_json(self, artifact_id: str) -> Any:
        """The content parsed as JSON, or None when absent."""


def _created_key(meta: ArtifactMetadata) -> int:
    # Parsed, not compared as text (decision D4).
    try:
        return epoch_ms(meta.created_at, field="created_at")
    except InvalidTimeError:
        return -(2**63)


class ArtifactStoreBase(ABC):
    """The ``ArtifactStore`` methods that follow from a backend's primitives, written once.

    Public API for store authors (``docs/stores.md``). A backend subclasses it and
    implements ``_write`` (put bytes and metadata), ``load``, ``get_metadata``, ``exists``,
    ``delete`` and ``_iter_metadata`` (every readable artifact); this class checks the
    arguments of ``store`` (id, bytes, JSON tags) before any write, stamps ``created_at``,
    and adds the listing, search and text/JSON conveniences. A backend may override any
    of them with something faster (the Redis store lists by run from an index).
    """

    @abstractmethod
    def _write(self, data: bytes, meta: ArtifactMetadata, meta_json: str) -> None:
        """Put ``data`` and its metadata (``meta_json`` is its JSON text) under ``meta.artifact_id``.

        Called with arguments already checked; replaces what the id held before.
        """

    @abstractmethod
    def load(self, artifact_id: str) -> Artifact | None:
        """See ``ArtifactStore.load``."""

    @abstractmethod
    def get_metadata(self, artifact_id: str) -> ArtifactMetadata | None:
        """See ``ArtifactStore.get_metadata``."""

    @abstractmethod
    def exists(self, artifact_id: str) -> bool:
        """See ``ArtifactStore.exists``."""

    @abstractmethod
    def delete(self, artifact_id: str) -> bool:
        """See ``ArtifactStore.delete``."""

    @abstractmethod
    def _iter_metadata(self) -> Iterable[ArtifactMetadata]:
        """Metadata of every readable artifact, in any order (skipping unreadable ones)."""

    def store(
        self,
        content: bytes,
        *,
        content_type: str = "application/octet-stream",
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
        artifact_id: str | None = None,
    ) -> ArtifactMetadata:
        """See ``ArtifactStore.store``."""
        if not isinstance(content, (bytes, bytearray, memoryview)):
            raise TypeError(f"content must be bytes, got {type(content).__name__}; use store_text or store_json")
        data = bytes(content)  # a copy: the caller may reuse a bytearray
        aid = compute_artifact_id(data) if artifact_id is None else artifact_id
        validate_artifact_id(aid)
        meta = ArtifactMetadata(aid, content_type, len(data), utc_now_iso(), run_id, dict(tags or {}))
        # Serialised before anything is written, so tags JSON cannot hold refuse the call cleanly.
        self._write(data, meta, dumps_checked(meta.to_dict(), "artifact metadata"))
        return meta

    def list_by_run(self, run_id: str) -> list[ArtifactMetadata]:
        """See ``ArtifactStore.list_by_run``."""
        return [m for m in self._iter_metadata() if m.run_id == run_id]

    def list_all(self, *, limit: int = 1000) -> list[ArtifactMetadata]:
        """See ``ArtifactStore.list_all``."""
        return self.search(limit=limit)

    def delete_by_run(self, run_id: str) -> int:
        """See ``ArtifactStore.delete_by_run``."""
        return sum(1 for m in self.list_by_run(run_id) if self.delete(m.artifact_id))

    def search(
        self,
        *,
        run_id: str | None = None,
        content_type: str | None = None,
        tags: dict[str, str] | None = None,
        limit: int = 1000,
    ) -> list[ArtifactMetadata]:
        """See ``ArtifactStore.search``."""
        wanted = (tags or {}).items()
        out = [
            m
            for m in self._iter_metadata()
            if (run_id is None or m.run_id == run_id)
            and (content_type is None or m.content_type == content_type)
            and all(m.tags.get(k) == v for k, v in wanted)
        ]
        out.sort(key=_created_key, reverse=True)
        return out[: max(limit, 0)]

    def store_text(
        self,
        text: str,
        *,
        content_type: str = "text/plain",
        encoding: str = "utf-8",
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> ArtifactMetadata:
        """See ``ArtifactStore.store_text``."""
        return self.store(text.encode(encoding), content_type=content_type, run_id=run_id, tags=tags)

    def store_json(
        self, data: Any, *, run_id: str | None = None, tags: dict[str, str] | None = None
    ) -> ArtifactMetadata:
        """See ``ArtifactStore.store_json``."""
        # Same bytes as the reference (compact, UTF-8, keys in given order), so ids match it.
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        return self.store(text.encode("utf-8"), content_type="application/json", run_id=run_id, tags=tags)

    def load_text(self, artifact_id: str, *, encoding: str = "utf-8") -> str | None:
        """See ``ArtifactStore.load_text``."""
        artifact = self.load(artifact_id)
        return None if artifact is None else artifact.as_text(encoding)

    def load_json(self, artifact_id: str) -> Any:
        """See ``ArtifactStore.load_json``."""
        artifact = self.load(artifact_id)
        return None if artifact is None else artifact.as_json()


class InMemoryArtifactStore(ArtifactStoreBase):
    """Artifacts held in this process; validates ids exactly as the durable stores do."""

    def __init__(self) -> None:
        # id -> (bytes, metadata JSON text); text so a caller's tag dict never aliases the store's.
        self._items: dict[str, tuple[bytes, str]] = {}
        self._lock = threading.Lock()

    def _write(self, data: bytes, meta: ArtifactMetadata, meta_json: str) -> None:
        with self._lock:
            self._items[meta.artifact_id] = (data, meta_json)

    def load(self, artifact_id: str) -> Artifact | None:
        """See ``ArtifactStore.load``."""
        validate_artifact_id(artifact_id)
        item = self._items.get(artifact_id)
        return None if item is None else Artifact(ArtifactMetadata.from_dict(json.loads(item[1])), item[0])

    def get_metadata(self, artifact_id: str) -> ArtifactMetadata | None:
        """See ``ArtifactStore.get_metadata``."""
        validate_artifact_id(artifact_id)
        item = self._items.get(artifact_id)
        return None if item is None else ArtifactMetadata.from_dict(json.loads(item[1]))

    def exists(self, artifact_id: str) -> bool:
        """See ``ArtifactStore.exists``."""
        validate_artifact_id(artifact_id)
        return artifact_id in self._items

    def delete(self, artifact_id: str) -> bool:
        """See ``ArtifactStore.delete``."""
        validate_artifact_id(artifact_id)
        with self._lock:
            return self._items.pop(artifact_id, None) is not None

    def _iter_metadata(self) -> Iterable[ArtifactMetadata]:
        with self._lock:
            texts = [text for _, text in self._items.values()]
        return [ArtifactMetadata.from_dict(json.loads(t)) for t in texts]


# -- References --------------------------------------------------------------------------------


def artifact_ref(artifact_id: str) -> dict[str, str]:
    """The value a run keeps in its vars to point at an artifact: ``{"$artifact": id}``."""
    return {ARTIFACT_REF_KEY: artifact_id}


def is_artifact_ref(value: Any) -> bool:
    """True for any dict holding the ``"$artifact"`` key."""
    return isinstance(value, dict) and ARTIFACT_REF_KEY in value


def get_artifact_id(ref: Any) -> str:
    """The id inside a reference; ``KeyError`` when ``ref`` is not one."""
    if not is_artifact_ref(ref):
        raise KeyError(f"Not an artifact reference: {ref!r}")
    artifact_id: str = ref[ARTIFACT_REF_KEY]
    return artifact_id


def resolve_artifact(ref: Any, store: ArtifactStore) -> Artifact | None:
    """The artifact a reference points at; None for a non-reference or a missing artifact."""
    if not is_artifact_ref(ref):
        return None
    # A reference holding a malformed id raises InvalidArtifactId: that is tampering, not absence.
    return store.load(get_artifact_id(ref))
