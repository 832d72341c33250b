"""``ScheduledRuntime``: a :class:`Runtime` and its :class:`Scheduler` in one object, and the
zero-config factory ``create_scheduled_runtime()``.

Not to be confused with :mod:`runtime.scheduler`, which holds the scheduler itself (the
background thread that wakes timers and delivers events). This module only puts the two
together, as AbstractRuntime 0.2.0's ``ScheduledRuntime`` did: start runs, answer them, and
let the scheduler wake them, through one object.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import RunNotWaiting
from .memory import InMemoryLedgerStore, InMemoryRunStore
from .models import EffectOutcome, RunState, RunStatus, WaitReason
from .policies import EffectPolicy
from .registry import WorkflowRegistry
from .runtime import Runtime
from .scheduler import Scheduler, SchedulerStats
from .spec import WorkflowSpec

__all__ = ["ScheduledRuntime", "create_scheduled_runtime"]


@dataclass
class ScheduledRuntime:
    """The simple way in: start runs, answer them, and let the scheduler wake timers."""

    runtime: Runtime
    scheduler: Scheduler
    registry: WorkflowRegistry

    def _ensure_registered(self, workflow: WorkflowSpec) -> None:
        if workflow.workflow_id not in self.registry:
            self.registry.register(workflow)

    def run(
        self,
        workflow: WorkflowSpec,
        *,
        vars: dict[str, Any] | None = None,
        actor_id: str | None = None,
        max_steps: int = 100,
    ) -> tuple[str, RunState]:
        """Start a run and tick it; returns ``(run_id, state)``."""
        self._ensure_registered(workflow)
        run_id = self.runtime.start(workflow=workflow, vars=vars, actor_id=actor_id)
        return run_id, self.runtime.tick(workflow=workflow, run_id=run_id, max_steps=max_steps)

    def start(self, *, workflow: WorkflowSpec, vars: dict[str, Any] | None = None,
              actor_id: str | None = None) -> str:
        self._ensure_registered(workflow)
        return self.runtime.start(workflow=workflow, vars=vars, actor_id=actor_id)

    def tick(self, run_id: str, *, max_steps: int = 100) -> RunState:
        run = self.runtime.get_state(run_id)
        workflow = self.registry.get_or_raise(run.workflow_id)
        return self.runtime.tick(workflow=workflow, run_id=run_id, max_steps=max_steps)

    def respond(self, run_id: str, payload: Any) -> RunState:
        """Answer a waiting run; its wait key is looked up for you."""
        run = self.runtime.get_state(run_id)
        if run.status != RunStatus.WAITING or run.waiting is None:
            raise RunNotWaiting(f"Run '{run_id}' is not waiting (status={RunStatus(run.status).value})",
                                run_id=run_id, status=run.status)
        if not run.waiting.wait_key:
            raise RunNotWaiting(f"Run '{run_id}' has no wait_key", run_id=run_id, status=run.status)
        return self.scheduler.resume_event(run_id=run_id, wait_key=run.waiting.wait_key, payload=payload)

    def resume_event(self, *, run_id: str, wait_key: str | None, payload: Any) -> RunState:
        return self.scheduler.resume_event(run_id=run_id, wait_key=wait_key, payload=payload)

    def get_state(self, run_id: str) -> RunState:
        return self.runtime.get_state(run_id)

    def get_ledger(self, run_id: str) -> list[dict[str, Any]]:
        return self.runtime.get_ledger(run_id)

    def find_waiting_runs(self, *, wait_reason: WaitReason | None = None, workflow_id: str | None = None,
                          limit: int = 100) -> list[RunState]:
        return self.scheduler.find_waiting_runs(wait_reason=wait_reason, workflow_id=workflow_id, limit=limit)

    @property
    def stats(self) -> SchedulerStats:
        """The scheduler's counters (a property, as in 0.2.0: ``srt.stats.runs_resumed``)."""
        return self.scheduler.stats

    def resume_subworkflow_parent(self, *, child_run_id: str, child_output: Any) -> RunState | None:
        return self.scheduler.resume_subworkflow_parent(child_run_id=child_run_id, child_output=child_output)

    def cancel_run(self, run_id: str, *, reason: str | None = None) -> RunState:
        return self.runtime.cancel_run(run_id, reason=reason)

    def cancel_with_children(self, run_id: str, *, reason: str | None = None) -> list[RunState]:
        return self.scheduler.cancel_with_children(run_id, reason=reason)

    @property
    def is_running(self) -> bool:
        return self.scheduler.is_running

    def start_scheduler(self) -> None:
        self.scheduler.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.scheduler.stop(timeout)

    def __enter__(self) -> ScheduledRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def create_scheduled_runtime(
    *,
    run_store: Any = None,
    ledger_store: Any = None,
    artifact_store: Any = None,
    effect_policy: EffectPolicy | None = None,
    workflows: Iterable[WorkflowSpec] | None = None,
    effect_handlers: Mapping[Any, Callable[..., EffectOutcome]] | None = None,
    poll_interval_s: float = 1.0,
    auto_start: bool = True,
    on_run_resumed: Callable[[RunState], Any] | None = None,
    on_run_failed: Callable[[str, Exception], Any] | None = None,
) -> ScheduledRuntime:
    """A :class:`ScheduledRuntime` on in-memory stores unless stores are given; scheduler started."""
    registry = WorkflowRegistry()
    for wf in workflows or ():
        registry.register(wf)
    runtime = Runtime(
        run_store=run_store if run_store is not None else InMemoryRunStore(),
        ledger_store=ledger_store if ledger_store is not None else InMemoryLedgerStore(),
        effect_handlers=effect_handlers,
        workflow_registry=registry,
        artifact_store=artifact_store,
        effect_policy=effect_policy,
    )
    scheduler = Scheduler(
        runtime=runtime,
        registry=registry,
        poll_interval_s=poll_interval_s,
        on_run_resumed=on_run_resumed,
        on_run_failed=on_run_failed,
    )
    if auto_start:
        scheduler.start()
    return ScheduledRuntime(runtime=runtime, scheduler=scheduler, registry=registry)
