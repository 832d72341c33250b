"""``Scheduler``: the in-process scheduler, a background thread that wakes due ``wait_until``
runs, plus event delivery, subworkflow parent resumption and cancellation of run trees.

Not to be confused with :mod:`runtime.scheduled`, which holds ``ScheduledRuntime`` (a
runtime and one of these schedulers in one object) and ``create_scheduled_runtime()``. The
Celery driver does not use this class: its timers are beat's recovery sweep and countdown
tasks (``workers/``).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._clock import utc_now_iso
from .errors import RunNotFound, RunNotWaiting, SchedulerAlreadyRunning
from .models import RunState, RunStatus, WaitReason
from .registry import WorkflowRegistry
from .runtime import Runtime
from .storage import QueryableRunStore

__all__ = ["Scheduler", "SchedulerStats"]

logger = logging.getLogger(__name__)

#: Due runs handled per poll cycle.
POLL_BATCH = 100


@dataclass
class SchedulerStats:
    """Counters of a scheduler since it was built."""

    runs_resumed: int = 0
    runs_failed: int = 0
    poll_cycles: int = 0
    last_poll_at: str | None = None
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"runs_resumed": self.runs_resumed, "runs_failed": self.runs_failed,
                "poll_cycles": self.poll_cycles, "last_poll_at": self.last_poll_at, "errors": list(self.errors)}


class Scheduler:
    """Resumes due ``wait_until`` runs from a daemon thread and delivers events to waiting runs."""

    def __init__(
        self,
        *,
        runtime: Runtime,
        registry: WorkflowRegistry,
        poll_interval_s: float = 1.0,
        max_errors_kept: int = 100,
        on_run_resumed: Callable[[RunState], Any] | None = None,
        on_run_failed: Callable[[str, Exception], Any] | None = None,
    ) -> None:
        if not isinstance(runtime.run_store, QueryableRunStore):
            raise TypeError(
                "Scheduler needs a run store implementing QueryableRunStore "
                "(list_runs, list_due_wait_until, list_children)"
            )
        self._runtime = runtime
        self._registry = registry
        self._poll_interval_s = poll_interval_s
        self._max_errors_kept = max_errors_kept
        self._on_run_resumed = on_run_resumed
        self._on_run_failed = on_run_failed
        self._stats = SchedulerStats()
        self._errors: deque[str] = deque(maxlen=max(max_errors_kept, 1))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stats(self) -> SchedulerStats:
        with self._lock:
            self._stats.errors = list(self._errors)
            return SchedulerStats(**{**self._stats.__dict__, "errors": list(self._errors)})

    def start(self) -> None:
        """Start the polling thread; :class:`SchedulerAlreadyRunning` if it runs already."""
        if self.is_running:
            raise SchedulerAlreadyRunning()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="abstractruntime-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to stop and wait up to ``timeout`` seconds for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # never let the thread die: record and go on
                self._record_error(None, exc)
            self._stop.wait(self._poll_interval_s)

    def _record_error(self, run_id: str | None, exc: Exception) -> None:
        who = f"Run {run_id}: " if run_id else ""
        with self._lock:
            self._errors.append(f"{utc_now_iso()}: {who}{exc}")

    def poll_once(self) -> int:
        """Tick every run whose ``wait_until`` is due (at most 100); return how many were resumed."""
        store: Any = self._runtime.run_store
        due = store.list_due_wait_until(now_iso=utc_now_iso(), limit=POLL_BATCH)
        resumed = 0
        for run in due:
            try:
                workflow = self._registry.get_or_raise(run.workflow_id)
                state = self._runtime.tick(workflow=workflow, run_id=run.run_id)
            except Exception as exc:
                logger.warning("scheduler: run %s failed to resume: %s", run.run_id, exc)
                with self._lock:
                    self._stats.runs_failed += 1
                self._record_error(run.run_id, exc)
                self._call(self._on_run_failed, run.run_id, exc)
                continue
            resumed += 1
            with self._lock:
                self._stats.runs_resumed += 1
            self._call(self._on_run_resumed, state)
        with self._lock:
            self._stats.poll_cycles += 1
            self._stats.last_poll_at = utc_now_iso()
        return resumed

    @staticmethod
    def _call(callback: Callable[..., Any] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:  # a broken callback must not stop the scheduler
            logger.exception("scheduler callback raised")

    def resume_event(self, *, run_id: str, wait_key: str | None, payload: Any) -> RunState:
        """Deliver an event to a waiting run and tick it."""
        run = self._runtime.get_state(run_id)
        if run.status != RunStatus.WAITING:
            raise RunNotWaiting(f"Run '{run_id}' is not waiting (status={RunStatus(run.status).value})",
                                run_id=run_id, status=run.status)
        if run.waiting is None:
            raise RunNotWaiting(f"Run '{run_id}' has no waiting state", run_id=run_id, status=run.status)
        workflow = self._registry.get_or_raise(run.workflow_id)
        return self._runtime.resume(workflow=workflow, run_id=run_id, wait_key=wait_key, payload=payload)

    def find_waiting_runs(
        self, *, wait_reason: WaitReason | None = None, workflow_id: str | None = None, limit: int = 100
    ) -> list[RunState]:
        """Waiting runs, newest first, optionally of one wait reason or workflow."""
        store: Any = self._runtime.run_store
        return store.list_runs(  # type: ignore[no-any-return]
            status=RunStatus.WAITING, wait_reason=wait_reason, workflow_id=workflow_id, limit=limit
        )

    def resume_subworkflow_parent(self, *, child_run_id: str, child_output: Any) -> RunState | None:
        """Resume the parent waiting on this child with ``{"sub_run_id", "output"}``; None if none waits."""
        child = self._runtime.run_store.load(child_run_id)
        if child is None or not child.parent_run_id:
            return None
        parent = self._runtime.run_store.load(child.parent_run_id)
        if parent is None or parent.status != RunStatus.WAITING or parent.waiting is None:
            return None
        if parent.waiting.reason != WaitReason.SUBWORKFLOW or parent.waiting.wait_key != f"subworkflow:{child_run_id}":
            return None
        workflow = self._registry.get_or_raise(parent.workflow_id)
        return self._runtime.resume(
            workflow=workflow,
            run_id=parent.run_id,
            wait_key=parent.waiting.wait_key,
            payload={"sub_run_id": child_run_id, "output": child_output},
        )

    def cancel_with_children(self, run_id: str, *, reason: str | None = None) -> list[RunState]:
        """Cancel a run and its descendants, breadth first; return every visited run now cancelled."""
        store: Any = self._runtime.run_store
        out: list[RunState] = []
        queue: deque[str] = deque([run_id])
        seen: set[str] = set()
        while queue:
            rid = queue.popleft()
            if rid in seen:
                continue
            seen.add(rid)
            try:
                state = self._runtime.cancel_run(rid, reason=reason)
            except RunNotFound:
                continue
            if state.status == RunStatus.CANCELLED:
                out.append(state)
            for child in store.list_children(parent_run_id=rid):
                if child.status in (RunStatus.RUNNING, RunStatus.WAITING):
                    queue.append(child.run_id)
        return out
