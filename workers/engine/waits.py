"""Named waits under the Celery driver (``runtime/waitset.py`` is the kernel's part): parking
on a set, answering one of its waits, and the wake that fires its reminders, escalation steps
and deadlines.

* A set is parked by the tick that ran its ``open_waits`` effect: the waits enter the
  indexes (``stores/redis/waits.py``) before the commit, which adds one ``wait.opened``
  event per wait; a wake is sent for its first timer (the timers index holds it too, for the
  sweep).
* An answer is a producer's commit, retried on a version conflict by re-reading, so that
  answers to different waits of one run commute; two answers to one wait: the first commit
  wins and the other finds the wait closed (:class:`~runtime.waitset.WaitClosed`). Every
  delivery is a ledger record naming the wait, who delivered it and when.
* A wake fires every timer due by the Redis clock, once: the commit marks each fired, so a
  duplicate wake (the countdown and the sweep) finds nothing due and writes nothing.
"""

from __future__ import annotations

from typing import Any

from runtime import RunState, RunStatus, VersionConflict
from runtime._json import ensure_json
from runtime.waitset import (
    UnknownWait,
    WaitClosed,
    deliver,
    fire_due,
    is_wait_set,
    next_due_ms,
    open_names,
    opened_events,
    recorded_closure,
)

from .. import metrics, tracing
from .producer import ProducerOperations

__all__ = ["NamedWaits"]

#: How many parents up a wait set looks for the root of its agent tree.
MAX_TREE_DEPTH = 64


class NamedWaits(ProducerOperations):
    """``Engine.answer``, and the parking and waking of runs on named waits."""

    def answer(self, run_id: str, wait_name: str, payload: Any, *, answered_by: str,
               answer_id: str | None = None) -> RunState:
        """Answer the open wait ``wait_name`` of a run (``Client.answer`` documents the errors)."""
        if not isinstance(answered_by, str) or not answered_by.strip():
            raise ValueError("an answer needs answered_by: who answers (a user id)")
        if answer_id is not None and (not isinstance(answer_id, str) or not answer_id):
            raise ValueError("answer_id must be a non-empty text (the same on every retry of one submit)")
        ensure_json(payload, "payload")

        def change(run: RunState, v: int) -> Any:
            w = run.waiting if run.status == RunStatus.WAITING else None
            if w is not None and not is_wait_set(w) and w.wait_key is not None and wait_name == w.wait_key:
                # a 0.2.0 single wait, named by its wait key: a resume by that key
                return self._delivered(run, "resume", wait_name, payload, answered_by)
            if w is None or not is_wait_set(w):
                self._refuse_closed(run, wait_name, answer_id)
                return None  # a retry of the answer that closed it
            d = deliver(run, wait_name, payload, by=answered_by, now_ms=self.backend.time_ms(), answer_id=answer_id)
            if d.duplicate:
                return None
            tracing.keep_caller_link(run.vars)
            return run, "tick" if d.resumed else "none", d.records, d.events

        return self._retrying(run_id, change)

    def _refuse_closed(self, run: RunState, name: str, answer_id: str | None) -> None:
        """A run whose set is over: the ledger tells whether ``name`` was answered (and by whom);
        returns for a retry under the same ``answer_id``, raises otherwise."""
        found = recorded_closure(self.backend.ledger.list(run.run_id), name)
        if found is None:
            w = run.waiting if run.status == RunStatus.WAITING else None
            single = [w.wait_key] if w is not None and not is_wait_set(w) and w.wait_key else []
            raise UnknownWait(run.run_id, name, open_names(run.waiting) or single)
        if answer_id is not None and found.get("answer_id") == answer_id:
            return
        raise WaitClosed(run.run_id, name, found.get("by"), found.get("at"), found["state"])

    def _root_of(self, run: RunState) -> str:
        """The run at the top of ``run``'s tree (its waits are listed under it)."""
        root, seen = run.run_id, 0
        parent = run.parent_run_id
        while parent and seen < MAX_TREE_DEPTH:
            state = self.backend.runs.load(parent)
            if state is None:
                break
            root, parent, seen = state.run_id, state.parent_run_id, seen + 1
        return root

    def _park_set(self, run: RunState, v: int, records: list[Any], now_ms: int) -> str:
        """Commit a run parking on a new wait set (``_land`` calls it)."""
        w = run.waiting
        assert w is not None and w.details is not None
        if run.parent_run_id:
            w.details["root"] = self._root_of(run)
        self.backend.put_wait_entries(self.backend.wait_entries(run))
        v = self._commit(run, records, v, events=opened_events(run, now_ms))
        self._tick_children()
        self._wake_at(run, v, now_ms)
        return "park"

    def _wake_at(self, run: RunState, v: int, now_ms: int) -> None:
        due = next_due_ms(run.waiting)
        if due is not None:
            self.dispatcher.wake(run.run_id, v, countdown=max(0.0, (due - now_ms) / 1000), workflow=run.workflow_id,
                                 node=run.current_node)

    @staticmethod
    def _count_fired(records: list[Any]) -> None:
        """Each timer fired, in the lateness histogram (``workers/metrics.py``)."""
        kinds = {"wait_reminder": "reminder", "wait_escalated": "escalation", "wait_expired": "deadline"}
        for r in records:
            kind = kinds.get(str((r.effect or {}).get("type")))
            if kind is not None:
                metrics.timer_fired(kind, float((r.result or {}).get("late_ms") or 0))

    def _wake_set(self, run: RunState, v: int, now_ms: int) -> str:
        """Fire the set's timers due at ``now_ms`` (a wake calls it); never one early."""
        due = next_due_ms(run.waiting)
        if due is None:
            return "stale"
        if due > now_ms:
            self._wake_at(run, v, now_ms)
            return "early"
        indexed = self.backend.wait_entries(run)
        fired = fire_due(run, now_ms)
        records = fired.records
        try:
            if fired.fail is not None:
                self._fail(run, records, fired.fail)
                self._commit_end(run, records, v, fenced=False, events=fired.events)
                self.backend.drop_wait_entries(indexed)
                self._count_fired(records)
                self._after_end(run)
                return "failed"
            now_indexed = self.backend.wait_entries(run)
            self.backend.put_wait_entries(now_indexed - indexed)
            if fired.resumed:
                v = self._commit_tick(run, records, v, fenced=False, events=fired.events)
            else:
                v = self._commit(run, records, v, fenced=False, events=fired.events)
        except VersionConflict:
            return "stale"  # another wake or an answer moved it first: its commit did what was due
        self.backend.drop_wait_entries(indexed - now_indexed)
        self._count_fired(records)
        if fired.resumed:
            return self._advance(run, v, now_ms)
        self._wake_at(run, v, now_ms)
        return "fired"
