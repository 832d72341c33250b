"""JSON-file backends: one ``run_{id}.json`` per run and one ``ledger_{id}.jsonl`` per run.

Durability rests on the ledger. Ledger lines are appended and fsynced (a ``started``
line is flushed with the next line of its run, one fsync for both); a last line cut
short by a crash was never acknowledged, so it is ignored when reading and cut off
before the next append. Run files are replaced atomically (temp file + rename), so a
crashed process leaves the previous state or the new one, never half a file; they are
not fsynced unless asked (``fsync=True``), because a state that a power loss rolls back
is recovered from the ledger: the kernel finds each recorded effect result by its
idempotency key and reuses it instead of running the effect again. Both kinds of file
may share one folder.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime import CorruptRecordError, RunAlreadyExists, RunState, StepRecord
from runtime._json import dumps_checked
from runtime.models import validate_run_id
from runtime.query import RunSummary, SummaryQueries, summarize

from ._atomic import atomic_create, atomic_write

__all__ = ["JsonFileRunStore", "JsonlLedgerStore"]

logger = logging.getLogger(__name__)

_RUN_PREFIX = "run_"
_RUN_SUFFIX = ".json"


class JsonFileRunStore(SummaryQueries):
    """Run states as JSON files in ``base_dir``; queryable (the scheduler can use it).

    Queries read the folder listing and re-read only the files whose size or mtime
    changed since the last query, so several processes may share the folder.
    """

    def __init__(self, base_dir: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self._dir = Path(base_dir)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._cache: dict[str, tuple[int, int, RunSummary]] = {}
        self._paths = _PathCache(self._dir, _RUN_PREFIX, _RUN_SUFFIX)
        self._lock = threading.Lock()

    @property
    def base_dir(self) -> Path:
        return self._dir

    def path_for(self, run_id: str) -> Path:
        return self._paths.get(run_id)

    def _encode(self, run: RunState) -> bytes:
        return dumps_checked(run.to_dict(), "run").encode("utf-8")

    def save(self, run: RunState) -> None:
        atomic_write(self.path_for(run.run_id), self._encode(run), fsync=self._fsync)

    def create(self, run: RunState) -> None:
        if not atomic_create(self.path_for(run.run_id), self._encode(run), fsync=self._fsync):
            raise RunAlreadyExists(run.run_id)

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptRecordError(location=str(path), reason=f"not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise CorruptRecordError(location=str(path), reason="not a JSON object")
        return data

    def load(self, run_id: str) -> RunState | None:
        path = self.path_for(run_id)
        data = self._read(path)
        if data is None:
            return None
        try:
            return RunState.from_dict(data)
        except (CorruptRecordError, TypeError, ValueError) as exc:
            raise CorruptRecordError(location=str(path), reason=str(exc), run_id=run_id) from None

    # -- QueryableRunStore ---------------------------------------------------------------------

    def _summary_rows(self) -> list[tuple[str, RunSummary]]:
        """Metadata of every readable run file; corrupt files are skipped with a warning."""
        seen: dict[str, RunSummary] = {}
        with os.scandir(self._dir) as it:
            entries = [e for e in it if e.name.startswith(_RUN_PREFIX) and e.name.endswith(_RUN_SUFFIX)]
        with self._lock:
            for entry in entries:
                run_id = entry.name[len(_RUN_PREFIX):-len(_RUN_SUFFIX)]
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                cached = self._cache.get(run_id)
                if cached and cached[0] == st.st_mtime_ns and cached[1] == st.st_size:
                    seen[run_id] = cached[2]
                    continue
                try:
                    data = self._read(Path(entry.path))
                except CorruptRecordError as exc:
                    logger.warning("skipping unreadable run file: %s", exc)
                    continue
                if data is None:
                    continue
                meta = summarize(data)
                self._cache[run_id] = (st.st_mtime_ns, st.st_size, meta)
                seen[run_id] = meta
            for gone in set(self._cache) - set(seen):
                self._cache.pop(gone, None)
        return list(seen.items())

    def _load_runs(self, run_ids: list[str]) -> list[RunState]:
        out = []
        for rid in run_ids:
            try:
                run = self.load(rid)
            except CorruptRecordError as exc:
                logger.warning("skipping unreadable run file: %s", exc)
                continue
            if run is not None:
                out.append(run)
        return out



class _PathCache:
    """File paths by run id, validated once (ids with path characters are refused)."""

    def __init__(self, directory: Path, prefix: str, suffix: str, size: int = 4096) -> None:
        self._dir, self._prefix, self._suffix, self._size = directory, prefix, suffix, size
        self._paths: dict[str, Path] = {}

    def get(self, run_id: str) -> Path:
        path = self._paths.get(run_id)
        if path is None:
            if len(self._paths) >= self._size:
                self._paths.clear()
            path = self._dir / f"{self._prefix}{validate_run_id(run_id)}{self._suffix}"
            self._paths[run_id] = path
        return path


@dataclass
class _LedgerIndex:
    """Effect results of one run's ledger file, read up to ``offset`` bytes."""

    offset: int = 0
    results: dict[str, Any] = field(default_factory=dict)
    #: File size after this store's last append, and that last record's hash.
    tail: tuple[int, str | None] | None = None


class JsonlLedgerStore:
    """Ledgers as JSON lines in ``base_dir``, one file per run, with an effect-result index.

    The index is filled from the file once (reading only bytes not read before) and then
    kept up to date by this store's own appends, so each effect step costs O(1).
    """

    def __init__(self, base_dir: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self._dir = Path(base_dir)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._index: dict[str, _LedgerIndex] = {}
        self._paths = _PathCache(self._dir, "ledger_", ".jsonl")
        self._lock = threading.Lock()

    @property
    def base_dir(self) -> Path:
        return self._dir

    def path_for(self, run_id: str) -> Path:
        return self._paths.get(run_id)

    def append(self, record: StepRecord) -> None:
        data = record.to_dict()
        line = (dumps_checked(data, "ledger record") + "\n").encode("utf-8")
        path = self.path_for(record.run_id)
        with self._lock:
            idx = self._index.setdefault(record.run_id, _LedgerIndex())
            with open(path, "a+b") as f:
                pos = f.tell()
                if pos and os.pread(f.fileno(), 1, pos - 1) != b"\n":
                    pos = self._cut_partial_line(f, pos)
                f.write(line)
                f.flush()
                # A `started` line needs no fsync of its own: the outcome line that follows
                # is fsynced, and that flushes the whole file. Losing only a `started`
                # line to a power cut loses nothing the kernel needs.
                if self._fsync and data["status"] != "started":
                    os.fsync(f.fileno())
            idx.tail = (pos + len(line), data["record_hash"])
            if idx.offset == pos:  # nobody else wrote since we last read: index our own line
                idx.offset = pos + len(line)
                _index_record(idx, data)

    @staticmethod
    def _cut_partial_line(f: Any, size: int) -> int:
        """Drop a last line left without its newline by a crash (it was never acknowledged)."""
        keep = size
        while keep > 0:  # walk back to the last newline, a block at a time
            start = max(0, keep - 65536)
            chunk = os.pread(f.fileno(), keep - start, start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            keep = start
        logger.warning("ledger %s: dropping a partial last line left by a crash", f.name)
        f.truncate(keep)
        f.seek(keep)
        return keep

    def _parse(self, path: Path, raw: bytes, start_line: int = 1) -> list[dict[str, Any]]:
        out = []
        lines = raw.split(b"\n")
        # The piece after the last newline is an unacknowledged partial write (or empty).
        for n, line in enumerate(lines[:-1], start=start_line):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise CorruptRecordError(location=f"{path} line {n}", reason=f"not valid JSON ({exc})") from None
            if not isinstance(rec, dict):
                raise CorruptRecordError(location=f"{path} line {n}", reason="not a JSON object")
            out.append(rec)
        return out

    def list(self, run_id: str) -> list[dict[str, Any]]:
        path = self.path_for(run_id)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return []
        return self._parse(path, raw)

    def last_record(self, run_id: str) -> dict[str, Any] | None:
        path = self.path_for(run_id)
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                block = 4096
                while True:
                    start = max(0, size - block)
                    f.seek(start)
                    chunk = f.read(size - start)
                    body = chunk[: chunk.rfind(b"\n") + 1] if chunk.rfind(b"\n") >= 0 else b""
                    lines = [ln for ln in body.split(b"\n") if ln.strip()]
                    if len(lines) >= 2 or start == 0:
                        break
                    block *= 4
        except FileNotFoundError:
            return None
        if not lines:
            return None
        try:
            rec = json.loads(lines[-1])
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptRecordError(location=f"{path} (last line)", reason=f"not valid JSON ({exc})") from None
        return rec if isinstance(rec, dict) else None

    def last_record_hash(self, run_id: str) -> str | None:
        """``record_hash`` of the newest record; read from the file only if another writer appended."""
        idx = self._index.get(run_id)
        if idx is not None and idx.tail is not None:
            try:
                if self.path_for(run_id).stat().st_size == idx.tail[0]:
                    return idx.tail[1]
            except FileNotFoundError:
                return None
        last = self.last_record(run_id)
        return last.get("record_hash") if last else None

    def find_effect_result(self, run_id: str, idempotency_key: str) -> Any:
        path = self.path_for(run_id)
        with self._lock:
            idx = self._index.setdefault(run_id, _LedgerIndex())
            if idempotency_key in idx.results:
                return idx.results[idempotency_key]
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                return None
            if size > idx.offset:  # another writer appended: read only the new bytes
                with open(path, "rb") as f:
                    f.seek(idx.offset)
                    raw = f.read(size - idx.offset)
                complete = raw[: raw.rfind(b"\n") + 1]
                for rec in self._parse(path, complete):
                    _index_record(idx, rec)
                idx.offset += len(complete)
            return idx.results.get(idempotency_key)


def _index_record(idx: _LedgerIndex, rec: dict[str, Any]) -> None:
    key = rec.get("idempotency_key")
    if key and rec.get("status") == "completed" and rec.get("result") is not None:
        idx.results.setdefault(key, rec["result"])
