"""Snapshots: named, tagged copies of a run's state that a user can find again and restore from.

A snapshot is a value: it holds ``run_state`` as the plain dict of ``RunState.to_dict()``, copied at
creation, so later steps of the run never change it. Stores keep JSON text or files, never the object.
"""

from __future__ import annotations

import builtins
import copy
import json
import re
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ._clock import epoch_ms, utc_now_iso
from ._json import dumps_checked
from .errors import CorruptRecordError, InvalidTimeError
from .models import RunState

__all__ = ["Snapshot", "SnapshotStore", "InMemorySnapshotStore", "validate_snapshot_id"]

#: Snapshot ids end up in file names and keys, so they get the same alphabet as artifact ids.
_ID_RE = re.compile(r"[A-Za-z0-9_-]+")


def validate_snapshot_id(snapshot_id: Any) -> str:
    """Return ``snapshot_id`` if it is a non-empty ``[A-Za-z0-9_-]`` string; ValueError otherwise."""
    # uuid4 ids (what from_run makes) always pass; anything else could escape a store's directory.
    if not isinstance(snapshot_id, str) or not _ID_RE.fullmatch(snapshot_id):
        raise ValueError(f"Invalid snapshot_id {snapshot_id!r}: only letters, digits, '_' and '-' are allowed")
    return snapshot_id


@dataclass
class Snapshot:
    """A named copy of one run's state at one moment."""

    snapshot_id: str
    run_id: str
    step_id: str | None
    name: str
    description: str | None
    tags: list[str] = field(default_factory=list)
    created_at: str = field(default_factory=utc_now_iso)
    updated_at: str = field(default_factory=utc_now_iso)
    run_state: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_run(
        cls,
        *,
        run: RunState,
        name: str,
        description: str | None = None,
        tags: list[str] | None = None,
        step_id: str | None = None,
    ) -> Snapshot:
        """A snapshot of ``run`` as it is now, with a fresh uuid4 id."""
        now = utc_now_iso()
        return cls(
            snapshot_id=str(uuid.uuid4()),
            run_id=run.run_id,
            step_id=step_id,
            name=name,
            description=description,
            tags=list(tags or []),
            created_at=now,
            updated_at=now,
            # Deep copy: the run keeps moving after this call, the snapshot must not.
            run_state=copy.deepcopy(run.to_dict()),
        )

    def to_dict(self) -> dict[str, Any]:
        """The stored shape (JSON-ready)."""
        return {
            "snapshot_id": self.snapshot_id,
            "run_id": self.run_id,
            "step_id": self.step_id,
            "name": self.name,
            "description": self.description,
            "tags": list(self.tags),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "run_state": self.run_state,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Snapshot:
        """Rebuild a snapshot; ``CorruptRecordError`` when a field is missing or of the wrong kind."""
        if not isinstance(data, Mapping):
            raise CorruptRecordError(location="snapshot", reason=f"expected an object, got {type(data).__name__}")
        try:
            tags = data.get("tags") or []
            run_state = data.get("run_state") or {}
            if not isinstance(tags, list) or not isinstance(run_state, dict):
                raise CorruptRecordError(location="snapshot", reason="tags must be a list and run_state an object")
            return cls(
                snapshot_id=data["snapshot_id"],
                run_id=data["run_id"],
                step_id=data.get("step_id"),
                name=data["name"],
                description=data.get("description"),
                tags=[str(t) for t in tags],
                created_at=data.get("created_at") or "",
                updated_at=data.get("updated_at") or "",
                run_state=run_state,
            )
        except KeyError as exc:
            raise CorruptRecordError(location="snapshot", reason=f"missing field {exc.args[0]!r}") from None

    def to_run(self) -> RunState:
        """The stored run state as a ``RunState`` (a fresh object)."""
        return RunState.from_dict(copy.deepcopy(self.run_state))


@runtime_checkable
class SnapshotStore(Protocol):
    """Where snapshots live."""

    def save(self, snapshot: Snapshot) -> None:
        """Store ``snapshot`` whole, replacing one with the same id, and set its ``updated_at`` to now.

        Atomic: a reader sees the old snapshot or the new one. Raises ``ValueError`` for an id outside
        ``[A-Za-z0-9_-]`` and ``PayloadNotSerializable`` for a state JSON cannot hold, storing nothing.
        """

    def load(self, snapshot_id: str) -> Snapshot | None:
        """The stored snapshot as a fresh object; None when absent.

        Raises ``CorruptRecordError`` naming the file/key when the stored data is unreadable.
        """

    def delete(self, snapshot_id: str) -> bool:
        """Remove the snapshot; True if it existed."""

    def list(
        self,
        *,
        run_id: str | None = None,
        tag: str | None = None,
        query: str | None = None,
        limit: int = 100,
    ) -> builtins.list[Snapshot]:
        """Snapshots matching every given filter, newest ``created_at`` first, at most ``limit``.

        ``tag`` matches one tag exactly, ignoring case; ``query`` is a case-insensitive substring
        of the name or the description. Unreadable records are skipped (and logged), not raised.
        """


def _created_key(snapshot: Snapshot) -> int:
    # Parsed, not compared as text (decision D4): "10:00+02:00" is older than "09:00Z".
    try:
        return epoch_ms(snapshot.created_at, field="created_at")
    except InvalidTimeError:
        return -(2**63)  # an unreadable time sorts last rather than failing the whole listing


def select_snapshots(
    snapshots: Iterable[Snapshot],
    *,
    run_id: str | None = None,
    tag: str | None = None,
    query: str | None = None,
    limit: int = 100,
) -> list[Snapshot]:
    """Apply the ``SnapshotStore.list`` filters, order and limit (shared by every backend)."""
    tag_l = tag.lower() if tag is not None else None
    query_l = query.lower() if query is not None else None
    out = []
    for s in snapshots:
        if run_id is not None and s.run_id != run_id:
            continue
        if tag_l is not None and tag_l not in (t.lower() for t in s.tags):
            continue
        if (
            query_l is not None
            and query_l not in (s.name or "").lower()
            and query_l not in (s.description or "").lower()
        ):
            continue
        out.append(s)
    out.sort(key=_created_key, reverse=True)
    return out[: max(limit, 0)]


def stamped_snapshot_json(snapshot: Snapshot) -> tuple[str, str]:
    """``(now, JSON text of the snapshot with updated_at=now)`` for a backend's ``save``.

    The caller assigns ``snapshot.updated_at = now`` only once the write succeeded, so a refused
    save leaves the object as it was.
    """
    now = utc_now_iso()
    data = snapshot.to_dict()
    data["updated_at"] = now
    return now, dumps_checked(data, "snapshot")


class InMemorySnapshotStore:
    """Snapshots held in this process as JSON text, so loads are copies as with durable stores."""

    def __init__(self) -> None:
        self._items: dict[str, str] = {}
        self._lock = threading.Lock()

    def save(self, snapshot: Snapshot) -> None:
        """See ``SnapshotStore.save``."""
        validate_snapshot_id(snapshot.snapshot_id)
        now, text = stamped_snapshot_json(snapshot)
        with self._lock:
            self._items[snapshot.snapshot_id] = text
        snapshot.updated_at = now

    def load(self, snapshot_id: str) -> Snapshot | None:
        """See ``SnapshotStore.load``."""
        validate_snapshot_id(snapshot_id)
        text = self._items.get(snapshot_id)
        return None if text is None else Snapshot.from_dict(json.loads(text))

    def delete(self, snapshot_id: str) -> bool:
        """See ``SnapshotStore.delete``."""
        validate_snapshot_id(snapshot_id)
        with self._lock:
            return self._items.pop(snapshot_id, None) is not None

    def list(
        self,
        *,
        run_id: str | None = None,
        tag: str | None = None,
        query: str | None = None,
        limit: int = 100,
    ) -> builtins.list[Snapshot]:
        """See ``SnapshotStore.list``."""
        with self._lock:
            texts = builtins.list(self._items.values())
        return select_snapshots(
            (Snapshot.from_dict(json.loads(t)) for t in texts), run_id=run_id, tag=tag, query=query, limit=limit
        )
