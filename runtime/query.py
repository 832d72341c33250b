"""Answering the ``QueryableRunStore`` questions for a store that keeps no index.

A store that cannot index (in memory, JSON files, one you write over a key-value store)
keeps a :class:`RunSummary` per run, built with :func:`summarize` whenever it saves a run,
and answers the three queries of :class:`~runtime.storage.QueryableRunStore` by handing
``(run_id, summary)`` pairs to these functions, which return run ids::

    def save(self, run):
        data = run.to_dict()
        self._texts[run.run_id] = json.dumps(data)
        self._summaries[run.run_id] = summarize(data)

    def list_due_wait_until(self, *, now_iso, limit=100):
        ids = select_due(self._summaries.items(), now_iso=now_iso, limit=limit)
        return [run for run in map(self.load, ids) if run is not None]

The filters and orders are the ones the Protocol promises (times compared parsed, decision
D4), so every backend built on them answers alike; the Redis store answers the same
questions from sorted sets. This module is public API for store authors (see
``docs/stores.md``); ``runtime._query``, its old private name, still imports.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from ._clock import epoch_ms, parse_iso

__all__ = ["RunSummary", "summarize", "select_runs", "select_due", "select_children", "SummaryQueries"]


class RunSummary(NamedTuple):
    """What the queries need to know of one run (plain strings, no enum members)."""

    status: str
    workflow_id: str
    updated_at: str
    wait_reason: str | None
    #: The ``until`` of a run waiting on a time, as epoch milliseconds; None otherwise.
    until_ms: int | None
    parent_run_id: str | None


def summarize(data: Mapping[str, Any]) -> RunSummary:
    """The summary of a run from its ``to_dict()`` form (enum members or plain strings)."""
    status = _plain(data.get("status"))
    waiting = data.get("waiting")
    wait_reason = until_ms = None
    if waiting:
        wait_reason = _plain(waiting.get("reason"))
        if status == "waiting" and waiting.get("until"):
            try:
                until_ms = epoch_ms(waiting["until"])
            except ValueError:
                until_ms = None
    return RunSummary(status, str(data.get("workflow_id")), str(data.get("updated_at") or ""), wait_reason,
                      until_ms, data.get("parent_run_id"))


def _plain(value: Any) -> Any:
    return getattr(value, "_value_", value)


def _updated_ts(summary: RunSummary) -> float:
    try:
        return parse_iso(summary.updated_at, field="updated_at").timestamp()
    except ValueError:
        return 0.0


def select_runs(rows: Iterable[tuple[str, RunSummary]], *, status: Any = None, wait_reason: Any = None,
                workflow_id: str | None = None, limit: int = 100) -> list[str]:
    """Run ids matching every given filter, newest ``updated_at`` first (times parsed)."""
    st, wr = _plain(status), _plain(wait_reason)
    found = [
        (rid, s) for rid, s in rows
        if (st is None or s.status == st) and (wr is None or s.wait_reason == wr)
        and (workflow_id is None or s.workflow_id == workflow_id)
    ]
    found.sort(key=lambda row: _updated_ts(row[1]), reverse=True)
    return [rid for rid, _ in found[: max(limit, 0)]]


def select_due(rows: Iterable[tuple[str, RunSummary]], *, now_iso: str, limit: int = 100) -> list[str]:
    """Ids of runs waiting ``until`` a time at or before ``now_iso``, oldest ``until`` first."""
    now_ms = epoch_ms(now_iso, field="now_iso")
    due = [(rid, s.until_ms) for rid, s in rows
           if s.status == "waiting" and s.wait_reason == "until" and s.until_ms is not None and s.until_ms <= now_ms]
    due.sort(key=lambda row: row[1] or 0)
    return [rid for rid, _ in due[: max(limit, 0)]]


def select_children(rows: Iterable[tuple[str, RunSummary]], *, parent_run_id: str, status: Any = None) -> list[str]:
    """Ids of the runs whose parent is ``parent_run_id``, optionally of one status."""
    st = _plain(status)
    return [rid for rid, s in rows if s.parent_run_id == parent_run_id and (st is None or s.status == st)]


class SummaryQueries:
    """The three ``QueryableRunStore`` methods, for a store that gives its summaries and loads runs.

    A subclass provides ``_summary_rows()`` (``(run_id, RunSummary)`` pairs) and
    ``_load_runs(run_ids)`` (the runs, in that order, skipping any that no longer load); the
    filters, orders and limits are the ones above, so every such store answers alike.
    """

    def _summary_rows(self) -> Iterable[tuple[str, RunSummary]]:
        raise NotImplementedError

    def _load_runs(self, run_ids: list[str]) -> list[Any]:
        raise NotImplementedError

    def list_runs(self, *, status: Any = None, wait_reason: Any = None, workflow_id: str | None = None,
                  limit: int = 100) -> list[Any]:
        return self._load_runs(select_runs(self._summary_rows(), status=status, wait_reason=wait_reason,
                                           workflow_id=workflow_id, limit=limit))

    def list_due_wait_until(self, *, now_iso: str, limit: int = 100) -> list[Any]:
        return self._load_runs(select_due(self._summary_rows(), now_iso=now_iso, limit=limit))

    def list_children(self, *, parent_run_id: str, status: Any = None) -> list[Any]:
        return self._load_runs(select_children(self._summary_rows(), parent_run_id=parent_run_id, status=status))
