"""What every part of the engine shares: its state, the :class:`Dispatcher` it sends
through, the commit, and how a run fails and ends.

The parts (``tick.py``, ``effects.py``, ``children.py``, ``sweep.py``, ``producer.py``) are
base classes of :class:`workers.engine.Engine`, each built on :class:`EngineBase`. The
methods one part calls in another are declared at the end of :class:`EngineBase`.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

from runtime import EffectType, RunState, RunStatus, StepRecord, VersionConflict
from runtime.errors import PayloadNotSerializable, StaleLease, WorkflowNotRegistered
from runtime.spec import WorkflowSpec
from stores.redis import RedisBackend
from stores.redis.backend import Loaded
from stores.redis.codec import ValueTooLarge
from stores.redis.dispatch import Dispatch

from .. import logs, metrics, tracing
from ..flow.dispatch import FairDispatch
from ..flow.gate import FlowGate
from ..registry import Registry
from ..settings import WorkerSettings
from .inline import Continuation

if TYPE_CHECKING:
    from runtime.models import EffectOutcome
    from runtime.step import PendingEffect, Transition

__all__ = ["Dispatcher", "EngineBase", "EFFECT_QUEUES"]

#: Every part logs as ``workers.engine`` (docs/logging.md), wherever its code lives.
logger = logging.getLogger("workers.engine")

#: The queue kind each effect type runs on; other effects (the waits) run inside the tick.
EFFECT_QUEUES = {
    EffectType.LLM_CALL: "llm",
    EffectType.TOOL_CALLS: "tools",
    EffectType.START_SUBWORKFLOW: "subworkflows",
}

#: What the store refuses to write (a node's vars that are not JSON, a value over the limit).
REFUSED = (PayloadNotSerializable, ValueTooLarge)


class Dispatcher(Protocol):
    """Sends the follow-up messages (the Celery one lives in ``workers.app``)."""

    # ``workflow`` and ``node`` label the message (Flower shows them); the task never reads them.
    # ``token`` is the run's fencing token the commit just granted (a message carrying an older
    # one is dropped by the task; None: not checked).
    def tick(self, run_id: str, version: int | None, *, countdown: float = 0.0, attempt: int = 1,
             workflow: str | None = None, node: str | None = None, token: int | None = None) -> None: ...

    def effect(self, kind: str, run_id: str, version: int | None, key: str, attempt: int, *,
               countdown: float = 0.0, workflow: str | None = None, node: str | None = None,
               token: int | None = None) -> None: ...

    def wake(self, run_id: str, version: int | None, *, countdown: float = 0.0, workflow: str | None = None,
             node: str | None = None) -> None: ...

    def flow(self, *, countdown: float = 0.0) -> None:
        """A fair-dispatch pass (``workers/flow/dispatch.py``) once a rate or budget refills."""


def iso(ms: int) -> str:
    """An epoch-ms time as ISO 8601 UTC."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat()


class EngineBase:
    """The state of an engine and the helpers its parts share."""

    def __init__(self, backend: RedisBackend, registry: Registry, settings: WorkerSettings,
                 dispatcher: Dispatcher) -> None:
        self.backend = backend
        self.registry = registry
        self.settings = settings
        #: With ``steps_per_task`` > 1, a task runs its run's next steps itself (``inline.py``).
        self.continuation = Continuation(dispatcher, steps=settings.steps_per_task,
                                         budget_ms=settings.task_budget_ms) if settings.steps_per_task > 1 else None
        self.dispatcher: Any = self.continuation or dispatcher
        self._tick_lease = int(settings.tick_lease_s * 1000)
        self._effect_lease = int(settings.effect_lease_s * 1000)
        #: Flow control (``workers/flow``): admits effect attempts; costs nothing with no rule.
        self.flow = FlowGate(backend, settings)
        #: Fair dispatch: deferred run starts and effect attempts, served by weighted round robin.
        self.fair = FairDispatch(self)
        # Children a START_SUBWORKFLOW handler created, ticked once the parent's commit is in
        # (per thread: a threads pool runs several effect tasks at once).
        self._local = threading.local()

    def task(self, run_id: str, first: Callable[[], Any]) -> Any:
        """Run one task's call (``first``), and then, with continuation on, the steps of its run
        it keeps in the task (``workers/engine/inline.py``); what the last one returned."""
        if self.continuation is None:
            return first()
        return self.continuation.run(self, run_id, first)

    def _inline_hint(self, pending: Any, kind: str, run_id: str) -> dict[str, Any]:
        """``{"inline": True}`` for the dispatcher when this effect may run in its tick: its kind
        is in ``inline_effects``, or its tools were all registered ``inline=True``."""
        if self.continuation is None or not self.continuation.keeps(run_id):
            return {}
        if kind in self.settings.inline_effects:
            return {"inline": True}
        if kind == "tools":
            calls = (pending.effect.payload or {}).get("tool_calls") or []
            names = [c.get("name") for c in calls if isinstance(c, dict)]
            if self.registry.inline_tools(names):
                return {"inline": True}
        return {}

    def _workflow(self, workflow_id: str) -> WorkflowSpec:
        spec = self.registry.workflows.get(workflow_id)
        if spec is None:
            raise WorkflowNotRegistered(workflow_id)
        return spec

    def _commit(self, run: RunState, records: list[StepRecord], version: int, *,
                dispatch: Dispatch | None = None, lease_ms: int | None = None, fenced: bool = True,
                events: Sequence[Mapping[str, Any]] = ()) -> int:
        """One version-checked commit (``VersionConflict``: another writer moved the run first).

        ``fenced``: the writer holds the run's lease (a tick or effect task, with the fencing
        token it loaded or its last commit granted): ``StaleLease`` when the lease was granted
        to another since. Producers, operators, a child telling its parent and the sweep hold
        none and commit with the version check alone.
        """
        fence = self.backend.fence_of(run.run_id) if fenced else None
        try:
            with tracing.child_span("abstractruntime.commit", run_id=run.run_id, version=version,
                                    records=len(records)):
                v = self.backend.commit(run, records, expected_version=version, dispatch=dispatch,
                                        lease_ms=lease_ms, fence=fence, events=events,
                                        keep_loaded=self._continues(run.run_id))
        except StaleLease:
            metrics.commit_refused("stale_lease")
            raise
        except VersionConflict:
            metrics.commit_refused("version_conflict")
            raise
        logs.note(run.run_id, version=v)  # the version the task's outcome line shows
        return v

    def _continues(self, run_id: str) -> bool:
        """Whether this task may run the run's next step itself (``workers/engine/inline.py``):
        then its commit keeps what it wrote, and that step reads it instead of loading it."""
        keeps = getattr(self.dispatcher, "keeps", None)
        return bool(keeps is not None and keeps(run_id))

    def _load_for_step(self, run_id: str) -> Loaded | None:
        """The run as a tick or effect task reads it: what this task's last commit of it wrote,
        when the task runs its next step itself, else loaded (one round trip)."""
        return self.backend.take_loaded(run_id) or self.backend.load_for_driver(run_id)

    def _token(self, run_id: str) -> int | None:
        """The fencing token to send with the message of the lease this thread's last commit
        of ``run_id`` granted."""
        return self.backend.fence_of(run_id)

    def _commit_tick(self, run: RunState, records: list[StepRecord], version: int, *, fenced: bool = True,
                     events: Sequence[Mapping[str, Any]] = ()) -> int:
        """Commit and expect a tick (under a tick lease); the caller sends it."""
        return self._commit(run, records, version, dispatch=Dispatch.tick(), lease_ms=self._tick_lease,
                            fenced=fenced, events=events)

    def _commit_end(self, run: RunState, records: list[StepRecord], version: int, *, fenced: bool = True,
                    events: Sequence[Mapping[str, Any]] = ()) -> int:
        """Commit a run that ended: one with a parent expects to tell it (under a lease, so the
        sweep tells it if this process dies first); one without expects nothing."""
        if run.parent_run_id:
            return self._commit(run, records, version, dispatch=Dispatch.notify(), lease_ms=self._tick_lease,
                                fenced=fenced, events=events)
        return self._commit(run, records, version, fenced=fenced, events=events)

    @staticmethod
    def _fail(run: RunState, records: list[StepRecord], message: str) -> None:
        """Fail ``run``: the last record, if still started, fails with ``message``, else one is added."""
        if records and records[-1].status == "started":
            records[-1].finish_failure(message)
        else:
            record = StepRecord.start(run=run, node_id=run.current_node or "", effect=None)
            record.finish_failure(message)
            records.append(record)
        run.status = RunStatus.FAILED
        run.error = message
        run.updated_at = records[-1].ended_at or run.updated_at

    def _keep_failure(self, run_id: str, exc: BaseException, *, where: str, node: str | None,
                      attempt: int) -> None:
        """Keep the traceback with the run (outside the ledger) for ``status`` and any UI."""
        try:
            self.backend.set_last_failure(run_id, {
                "where": where, "node": node, "attempt": attempt, "type": type(exc).__name__,
                "message": str(exc)[:2000], "at": iso(self.backend.time_ms()),
                "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            })
        except Exception as keep_exc:  # keeping it is a courtesy: never let it change the outcome
            logger.warning("run %s: could not keep the failure's traceback: %s", run_id, keep_exc)

    if TYPE_CHECKING:
        # The seams between the parts: each is defined by the part named, and called by others.

        def _land(self, run: RunState, v: int, tr: Transition, records: list[StepRecord],  # tick.py
                  now_ms: int) -> str: ...

        def _handlers(self, now_ms: int | None = None) -> dict[Any, Any]: ...  # effects.py

        def _run_effect(self, run: RunState, pending: PendingEffect,  # effects.py
                        handlers: dict[Any, Any]) -> EffectOutcome: ...

        def _start_subworkflow(self, run: RunState, effect: Any,  # children.py
                               default_next_node: str | None) -> EffectOutcome: ...

        def _notify_parent(self, child: RunState) -> None: ...  # children.py

        def _tick_children(self) -> None: ...  # children.py

        def _advance(self, run: RunState, v: int, now_ms: int, attempt: int = 1) -> str: ...  # tick.py

        def _park_set(self, run: RunState, v: int, records: list[StepRecord], now_ms: int) -> str: ...  # waits.py

        def _wake_set(self, run: RunState, v: int, now_ms: int) -> str: ...  # waits.py

        def fire_schedules(self) -> dict[str, int]: ...  # schedules.py

        def _after_end(self, run: RunState) -> None: ...  # children.py

        def create(self, workflow: WorkflowSpec, *, vars: dict[str, Any] | None = None,  # producer.py
                   run_id: str | None = None, actor_id: str | None = None, session_id: str | None = None,
                   parent_run_id: str | None = None, dispatch: bool = True, flow: Any = None,
                   attrs: Any = None) -> str: ...
