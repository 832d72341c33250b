"""In-memory stores: the reference's development backends, and the fake our tests rely on.

They keep JSON text, not live objects, so they behave like the durable backends: a
loaded state is a fresh copy, a value that could not be stored in Redis or a file is
refused here too, and changing an object after saving it does not change the store.
"""

from __future__ import annotations

import json
import threading
from typing import Any, NamedTuple

from ._json import dumps_checked, epoch_ms, parse_iso
from .errors import RunAlreadyExists
from .models import RunState, RunStatus, StepRecord, WaitReason, _value

__all__ = ["InMemoryRunStore", "InMemoryLedgerStore"]


class _RunMeta(NamedTuple):
    status: str
    workflow_id: str
    updated_at: str
    wait_reason: str | None
    until_ms: int | None
    parent_run_id: str | None


def _meta(run: RunState) -> _RunMeta:
    w = run.waiting
    status = _value(run.status)
    if w is None:
        return _RunMeta(status, run.workflow_id, run.updated_at, None, None, run.parent_run_id)
    until_ms = None
    if status == "waiting" and w.until:
        try:
            until_ms = epoch_ms(w.until)
        except ValueError:
            until_ms = None
    return _RunMeta(status, run.workflow_id, run.updated_at, _value(w.reason), until_ms, run.parent_run_id)


def _updated_key(meta: _RunMeta) -> float:
    try:
        return parse_iso(meta.updated_at, field="updated_at").timestamp()
    except ValueError:
        return 0.0


class InMemoryRunStore:
    """Run states held in this process, with the query interface the scheduler needs."""

    def __init__(self) -> None:
        self._runs: dict[str, str] = {}
        self._meta: dict[str, _RunMeta] = {}
        self._lock = threading.Lock()

    def save(self, run: RunState) -> None:
        text = dumps_checked(run.to_dict(), "run")
        meta = _meta(run)
        with self._lock:
            self._runs[run.run_id] = text
            self._meta[run.run_id] = meta

    def create(self, run: RunState) -> None:
        text = dumps_checked(run.to_dict(), "run")
        meta = _meta(run)
        with self._lock:
            if run.run_id in self._runs:
                raise RunAlreadyExists(run.run_id)
            self._runs[run.run_id] = text
            self._meta[run.run_id] = meta

    def load(self, run_id: str) -> RunState | None:
        text = self._runs.get(run_id)
        return None if text is None else RunState.from_dict(json.loads(text))

    # -- QueryableRunStore ---------------------------------------------------------------------

    def _select(self, pred: Any) -> list[tuple[str, _RunMeta]]:
        with self._lock:
            return [(rid, m) for rid, m in self._meta.items() if pred(m)]

    def _load_all(self, ids: list[str]) -> list[RunState]:
        out = []
        for rid in ids:
            run = self.load(rid)
            if run is not None:
                out.append(run)
        return out

    def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        wait_reason: WaitReason | None = None,
        workflow_id: str | None = None,
        limit: int = 100,
    ) -> list[RunState]:
        st = RunStatus(status).value if status is not None else None
        wr = WaitReason(wait_reason).value if wait_reason is not None else None

        def pred(m: _RunMeta) -> bool:
            return (
                (st is None or m.status == st)
                and (wr is None or m.wait_reason == wr)
                and (workflow_id is None or m.workflow_id == workflow_id)
            )

        rows = sorted(self._select(pred), key=lambda rm: _updated_key(rm[1]), reverse=True)
        return self._load_all([rid for rid, _ in rows[: max(limit, 0)]])

    def list_due_wait_until(self, *, now_iso: str, limit: int = 100) -> list[RunState]:
        now_ms = epoch_ms(now_iso, field="now_iso")
        rows = self._select(
            lambda m: m.status == "waiting" and m.wait_reason == "until" and m.until_ms is not None
            and m.until_ms <= now_ms
        )
        rows.sort(key=lambda rm: rm[1].until_ms or 0)
        return self._load_all([rid for rid, _ in rows[: max(limit, 0)]])

    def list_children(self, *, parent_run_id: str, status: RunStatus | None = None) -> list[RunState]:
        st = RunStatus(status).value if status is not None else None
        rows = self._select(lambda m: m.parent_run_id == parent_run_id and (st is None or m.status == st))
        return self._load_all([rid for rid, _ in rows])


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
