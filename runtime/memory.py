"""In-memory stores: the reference's development backends, and the fake our tests rely on.

They keep JSON text, not live objects, so they behave like the durable backends: a
loaded state is a fresh copy, a value that could not be stored in Redis or a file is
refused here too, and changing an object after saving it does not change the store.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from ._json import dumps_checked
from .errors import RunAlreadyExists
from .models import RunState, StepRecord
from .query import RunSummary, SummaryQueries, summarize

__all__ = ["InMemoryRunStore", "InMemoryLedgerStore"]


class InMemoryRunStore(SummaryQueries):
    """Run states held in this process, with the query interface the scheduler needs."""

    def __init__(self) -> None:
        self._runs: dict[str, str] = {}
        self._meta: dict[str, RunSummary] = {}
        self._lock = threading.Lock()

    def save(self, run: RunState) -> None:
        data = run.to_dict()
        text = dumps_checked(data, "run")
        meta = summarize(data)
        with self._lock:
            self._runs[run.run_id] = text
            self._meta[run.run_id] = meta

    def create(self, run: RunState) -> None:
        data = run.to_dict()
        text = dumps_checked(data, "run")
        meta = summarize(data)
        with self._lock:
            if run.run_id in self._runs:
                raise RunAlreadyExists(run.run_id)
            self._runs[run.run_id] = text
            self._meta[run.run_id] = meta

    def load(self, run_id: str) -> RunState | None:
        text = self._runs.get(run_id)
        return None if text is None else RunState.from_dict(json.loads(text))

    # -- QueryableRunStore ---------------------------------------------------------------------

    def _summary_rows(self) -> list[tuple[str, RunSummary]]:
        with self._lock:
            return list(self._meta.items())

    def _load_runs(self, ids: list[str]) -> list[RunState]:
        runs = (self.load(rid) for rid in ids)
        return [run for run in runs if run is not None]



class InMemoryLedgerStore:
    """Ledgers held in this process, as JSON lines, with an index of effect results by key."""

    def __init__(self) -> None:
        self._lines: dict[str, list[str]] = {}
        # run id -> idempotency key -> index of the first completed line with a result
        self._results: dict[str, dict[str, int]] = {}
        self._heads: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def append(self, record: StepRecord) -> None:
        data = record.to_dict()
        text = dumps_checked(data, "ledger record")
        run_id = record.run_id
        with self._lock:
            lines = self._lines.get(run_id)
            if lines is None:
                lines = self._lines[run_id] = []
            lines.append(text)
            self._heads[run_id] = data["record_hash"]
            if _makes_result(data):
                # The first completed record of a key wins, as in the reference.
                self._results.setdefault(run_id, {}).setdefault(data["idempotency_key"], len(lines) - 1)

    def list(self, run_id: str) -> list[dict[str, Any]]:
        with self._lock:
            lines = list(self._lines.get(run_id, ()))
        return [json.loads(line) for line in lines]

    def last_record(self, run_id: str) -> dict[str, Any] | None:
        """The newest record of the run, or None."""
        with self._lock:
            lines = self._lines.get(run_id)
            last = lines[-1] if lines else None
        return None if last is None else json.loads(last)

    def last_record_hash(self, run_id: str) -> str | None:
        """``record_hash`` of the newest record (what a hash chain links the next one to)."""
        return self._heads.get(run_id)

    def find_effect_result(self, run_id: str, idempotency_key: str) -> Any:
        with self._lock:
            index = self._results.get(run_id, {}).get(idempotency_key)
            line = None if index is None else self._lines[run_id][index]
        return None if line is None else json.loads(line)["result"]


def _makes_result(data: dict[str, Any]) -> bool:
    """Whether a record makes its result reusable: completed, keyed, and not None."""
    return data["status"] == "completed" and bool(data["idempotency_key"]) and data["result"] is not None
