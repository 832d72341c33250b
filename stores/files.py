"""File-backed snapshot and artifact stores: one directory, plain JSON and bytes, atomic writes.

Every write goes through ``atomic_write`` (temp file in the target's directory, fsync, ``os.replace``),
so a crash leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from runtime.artifacts import Artifact, ArtifactMetadata, ArtifactStoreBase, validate_artifact_id
from runtime.errors import CorruptRecordError
from runtime.snapshots import Snapshot, select_snapshots, stamped_snapshot_json, validate_snapshot_id

from ._atomic import atomic_write

__all__ = ["JsonSnapshotStore", "FileArtifactStore"]

logger = logging.getLogger(__name__)


def _read_json(path: Path) -> Any:
    """The parsed JSON of ``path``; ``CorruptRecordError`` naming the file if it is not JSON.

    ``FileNotFoundError`` passes through so callers can treat a vanished file as absent.
    """
    raw = path.read_bytes()
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptRecordError(location=str(path), reason=f"not valid JSON ({exc})") from None


def _relocate(exc: CorruptRecordError, path: Path) -> CorruptRecordError:
    """The same error, naming the file instead of the record kind."""
    return CorruptRecordError(location=str(path), reason=exc.reason, run_id=exc.run_id)


class JsonSnapshotStore:
    """Snapshots as ``{base_dir}/snapshot_{id}.json`` files."""

    def __init__(self, base_dir: str | os.PathLike[str]) -> None:
        self._dir = Path(base_dir)
        self._dir.mkdir(parents=True, exist_ok=True)

    def _path(self, snapshot_id: str) -> Path:
        # Validated on every path built: an id such as "../x" must never leave the directory.
        return self._dir / f"snapshot_{validate_snapshot_id(snapshot_id)}.json"

    def save(self, snapshot: Snapshot) -> None:
        """See ``SnapshotStore.save``."""
        path = self._path(snapshot.snapshot_id)
        now, text = stamped_snapshot_json(snapshot)
        atomic_write(path, text.encode("utf-8"))
        snapshot.updated_at = now

    def load(self, snapshot_id: str) -> Snapshot | None:
        """See ``SnapshotStore.load``; ``CorruptRecordError`` names the file."""
        path = self._path(snapshot_id)
        try:
            return self._read(path)
        except FileNotFoundError:
            return None

    def delete(self, snapshot_id: str) -> bool:
        """See ``SnapshotStore.delete``."""
        try:
            self._path(snapshot_id).unlink()
        except FileNotFoundError:
            return False
        return True

    def list(
        self,
        *,
        run_id: str | None = None,
        tag: str | None = None,
        query: str | None = None,
        limit: int = 100,
    ) -> builtins.list[Snapshot]:
        """See ``SnapshotStore.list``; unreadable files are skipped with a warning."""
        return select_snapshots(self._readable(), run_id=run_id, tag=tag, query=query, limit=limit)

    def _read(self, path: Path) -> Snapshot:
        try:
            return Snapshot.from_dict(_read_json(path))
        except CorruptRecordError as exc:
            raise _relocate(exc, path) from None

    def _readable(self) -> Iterator[Snapshot]:
        for path in sorted(self._dir.glob("snapshot_*.json")):
            try:
                yield self._read(path)
            except FileNotFoundError:
                continue  # deleted while we listed: simply gone
            except (CorruptRecordError, OSError) as exc:
                logger.warning("Skipping unreadable snapshot file %s: %s", path, exc)


class FileArtifactStore(ArtifactStoreBase):
    """Artifacts as ``{base_dir}/artifacts/{id}.bin`` plus ``{id}.meta`` (JSON metadata).

    Write order makes a crash look like absence: ``store`` writes ``.meta`` then ``.bin`` and
    ``delete`` removes ``.bin`` then ``.meta``, and an artifact exists only while its ``.bin`` does.
    A leftover ``.meta`` without ``.bin`` is ignored and replaced by the next store of that id.
    """

    def __init__(self, base_dir: str | os.PathLike[str]) -> None:
        self._dir = Path(base_dir) / "artifacts"
        self._dir.mkdir(parents=True, exist_ok=True)

    def _bin(self, artifact_id: str) -> Path:
        validate_artifact_id(artifact_id)  # on every path built: no "../" or "/" may reach the filesystem
        return self._dir / f"{artifact_id}.bin"

    def _meta(self, artifact_id: str) -> Path:
        validate_artifact_id(artifact_id)
        return self._dir / f"{artifact_id}.meta"

    def _write(self, data: bytes, meta: ArtifactMetadata, meta_json: str) -> None:
        # .meta first: until .bin lands the artifact does not exist (see the class docstring).
        atomic_write(self._meta(meta.artifact_id), meta_json.encode("utf-8"))
        atomic_write(self._bin(meta.artifact_id), data)

    def load(self, artifact_id: str) -> Artifact | None:
        """See ``ArtifactStore.load``; ``CorruptRecordError`` names the unreadable file."""
        bin_path = self._bin(artifact_id)
        meta = self.get_metadata(artifact_id)
        if meta is None:
            return None
        try:
            content = bin_path.read_bytes()
        except FileNotFoundError:
            return None  # deleted between the two reads
        if len(content) != meta.size_bytes:
            # An overwrite under an explicit id interrupted between .meta and .bin.
            raise CorruptRecordError(
                location=str(bin_path), reason=f"{len(content)} bytes, metadata says {meta.size_bytes}"
            )
        return Artifact(meta, content)

    def get_metadata(self, artifact_id: str) -> ArtifactMetadata | None:
        """See ``ArtifactStore.get_metadata``; ``CorruptRecordError`` names an unreadable ``.meta``."""
        bin_path, meta_path = self._bin(artifact_id), self._meta(artifact_id)
        if not bin_path.exists():
            return None
        try:
            meta = ArtifactMetadata.from_dict(_read_json(meta_path))
        except FileNotFoundError:
            raise CorruptRecordError(location=str(meta_path), reason="metadata file missing") from None
        except CorruptRecordError as exc:
            raise _relocate(exc, meta_path) from None
        if meta.artifact_id != artifact_id:
            raise CorruptRecordError(location=str(meta_path), reason=f"holds artifact_id {meta.artifact_id!r}")
        return meta

    def exists(self, artifact_id: str) -> bool:
        """See ``ArtifactStore.exists`` (looks at the ``.bin`` file)."""
        return self._bin(artifact_id).exists()

    def delete(self, artifact_id: str) -> bool:
        """See ``ArtifactStore.delete``."""
        bin_path, meta_path = self._bin(artifact_id), self._meta(artifact_id)
        existed = True
        try:
            bin_path.unlink()
        except FileNotFoundError:
            existed = False
        try:
            meta_path.unlink()
        except FileNotFoundError:
            pass
        return existed

    def _iter_metadata(self) -> Iterable[ArtifactMetadata]:
        out = []
        for meta_path in sorted(self._dir.glob("*.meta")):
            artifact_id = meta_path.name[: -len(".meta")]
            try:
                meta = self.get_metadata(artifact_id)
            except (CorruptRecordError, ValueError, OSError) as exc:
                # ValueError covers a stray file whose name is not a valid id.
                logger.warning("Skipping unreadable artifact metadata %s: %s", meta_path, exc)
                continue
            if meta is not None:
                out.append(meta)
        return out
