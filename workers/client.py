"""The producer side: start runs by workflow id, watch them, answer them, cancel them.

A producer needs the same settings as the workers (``ABSTRACTRUNTIME_*``). It imports the
workflow modules only to start a run (it checks the workflow id and finds its entry node
there); reading, answering and cancelling runs need no workflow code. It never runs a node.
Every change it makes is one version-checked commit, then a message::

    client = Client()
    run_id = client.start("greet", vars={"name": "Ada"})
    state = client.wait_for(run_id, timeout=30)
"""

from __future__ import annotations

import getpass
import os
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from celery import Celery

from runtime import RunState, RunStatus, WaitReason
from runtime.errors import RunError, RunNotFound, WorkflowNotRegistered
from runtime.spec import WorkflowSpec
from stores.redis import RedisBackend

from .app import CeleryDispatcher, create_app
from .attrs import ATTRS_VARS, AttrValues, InvalidRunAttribute, query_attrs
from .engine import Dispatcher, Engine
from .flow.rules import AdmissionKeys
from .registry import Registry, registry
from .settings import WorkerSettings

__all__ = ["Client", "WaitTimeout", "TERMINAL"]

#: Statuses a run does not leave.
TERMINAL = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


class WaitTimeout(RunError, TimeoutError):
    """Raised when ``wait_for`` runs out of time; ``state`` is the run as last seen."""

    def __init__(self, run_id: str, statuses: Iterable[RunStatus], timeout_s: float, state: RunState) -> None:
        self.run_id, self.state = run_id, state
        wanted = ", ".join(RunStatus(s).value for s in statuses)
        super().__init__(f"Run '{run_id}' did not reach {wanted} within {timeout_s:g}s; it is "
                         f"{RunStatus(state.status).value} at node {state.current_node!r}")


def operator_actor() -> str:
    """Who an operator's change is recorded as: ``ABSTRACTRUNTIME_ACTOR``, else ``user@host``."""
    named = os.environ.get("ABSTRACTRUNTIME_ACTOR", "").strip()
    if named:
        return named
    try:
        user = getpass.getuser()
    except Exception:  # no user name in this environment (a container without /etc/passwd entry)
        user = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


class Client:
    """Start, inspect, resume and cancel runs that Celery workers execute."""

    def __init__(self, settings: WorkerSettings | None = None, *, app: Celery | None = None,
                 backend: RedisBackend | None = None, reg: Registry | None = None,
                 dispatcher: Dispatcher | None = None) -> None:
        """``dispatcher`` replaces Celery as what carries the messages: a
        :class:`workers.testing.StubDispatcher` lets a test drive runs through this client in
        process (no broker, no app is made)."""
        self.settings = settings if settings is not None else WorkerSettings.from_env()
        self.registry = reg if reg is not None else registry
        self._own_app = app is None
        self._app = app
        self._dispatcher = dispatcher
        self._engine: Engine | None = None
        if backend is None:
            backend = RedisBackend.from_settings(self.settings.redis, signer=self.settings.signing.signer())
        self.backend = backend

    # The workflow modules, the Celery app and the engine are made on first use: reading a run
    # (status, ledger, lists) needs none of them, so it works where the workflow code is absent.

    @property
    def app(self) -> Celery:
        """The Celery app that carries this client's messages (made on first use)."""
        if self._app is None:
            self._app = create_app(self.settings, reg=self.registry)
        return self._app

    @property
    def engine(self) -> Engine:
        """The driver's producer operations, sending through :attr:`app` (made on first use)."""
        if self._engine is None:
            dispatcher = self._dispatcher if self._dispatcher is not None else \
                CeleryDispatcher(self.app, self.settings, tolerant=True)
            self._engine = Engine(self.backend, self.registry, self.settings, dispatcher)
        return self._engine

    def import_workflows(self) -> None:
        """Import the modules named by ``ABSTRACTRUNTIME_IMPORTS`` (once); ImportError names them."""
        self.registry.import_modules(self.settings.imports)

    # -- starting --------------------------------------------------------------------------------

    def start(self, workflow_id: str, vars: dict[str, Any] | None = None, *, run_id: str | None = None,
              actor_id: str | None = None, session_id: str | None = None, tenant: str | None = None,
              user: str | None = None, agent: str | None = None, priority: int | None = None,
              attrs: AttrValues | None = None) -> str:
        """Create a run of ``workflow_id`` and send its first tick; returns the run id.

        ``run_id`` picks the id, which must be free (:class:`RunAlreadyExists` otherwise).
        ``tenant``, ``user`` and ``agent`` are the keys flow control admits the run under
        (``docs/flow-control.md``; the agent defaults to the workflow id), and ``priority`` (1 first
        to 5 last; default 3) orders its deferred work in its key's fair-dispatch queue; a
        malformed one is :class:`~workers.flow.InvalidLimitRule`, and nothing is stored. A rule
        that refuses the start raises :class:`~workers.flow.BudgetExceeded`, nothing stored; one
        that defers it parks it (the run exists, ``explain`` says why it waits).
        :class:`WorkflowNotRegistered` when no imported module registered the workflow.

        ``attrs``: indexed attributes to find the run by (:meth:`list_runs`), never changed and
        not inherited by child runs; names from ``ABSTRACTRUNTIME_RUN_ATTRS``, values str, int or
        bool kept as text (``docs/celery.md``). A bad one raises
        :class:`~workers.attrs.InvalidRunAttribute` naming it, and nothing is stored.
        """
        if isinstance(vars, Mapping) and ATTRS_VARS in vars:
            raise InvalidRunAttribute(None, f"set attributes with attrs=, not vars[{ATTRS_VARS!r}]")
        workflow = self._registered(workflow_id)
        flow = AdmissionKeys(tenant=tenant, user=user, agent=agent, priority=priority)
        return self.engine.create(workflow, vars=vars, run_id=run_id, actor_id=actor_id, session_id=session_id,
                                  flow=flow, attrs=attrs)

    # -- reading ---------------------------------------------------------------------------------

    def get_state(self, run_id: str) -> RunState:
        run = self.backend.runs.load(run_id)
        if run is None:
            raise RunNotFound(run_id)
        return run

    def last_failure(self, run_id: str) -> dict[str, Any] | None:
        """The run's newest node or effect-handler failure, with its traceback (None if none).

        ``{where, node, attempt, type, message, at, traceback}``; kept outside the ledger and
        replaced by the next failure.
        """
        return self.backend.last_failure(run_id)

    def explain(self, run_id: str) -> Any:
        """Why the run is where it is: a :class:`workers.explain.Diagnosis` (``RunNotFound`` if none).

        Read from stored data, the heartbeats and the broker; needs no workflow code."""
        from .fleet import BrokerProbe, explain_run

        probe = BrokerProbe(self.app, self.settings)
        try:
            return explain_run(self.backend, self.settings, run_id, broker=probe)
        finally:
            probe.close()

    def get_ledger(self, run_id: str) -> list[dict[str, Any]]:
        return self.backend.ledger.list(run_id)

    def verify(self, run_id: str) -> dict[str, Any]:
        """The hash-chain check of a run's ledger against its stored head."""
        return self.backend.ledger.verify(run_id)

    def follow_ledger(self, run_id: str, *, block_ms: int = 5000, until_terminal: bool = True
                      ) -> Iterator[dict[str, Any]]:
        """Yield the run's ledger records, then each new one as it is appended (blocking reads).

        Stops once the run is terminal and every record has been read (``until_terminal``).
        """
        last = "0"
        while True:
            batch = self.backend.ledger.follow(run_id, last_id=last, block_ms=block_ms)
            for entry_id, record in batch:
                last = entry_id
                yield record
            if not batch and until_terminal and self.get_state(run_id).status in TERMINAL:
                return

    def follow_events(self, *, last_id: str = "$", block_ms: int = 5000) -> list[tuple[str, dict[str, str]]]:
        """Commits of every run after ``last_id`` (a blocking read of the events stream)."""
        return self.backend.follow_events(last_id=last_id, block_ms=block_ms)

    def list_runs(self, *, status: RunStatus | str | None = None, workflow_id: str | None = None,
                  wait_reason: WaitReason | str | None = None, limit: int = 100,
                  attrs: AttrValues | None = None) -> list[RunState]:
        """Runs with every filter given, newest updated first, from the indexes (no scan).

        ``attrs``: the runs started with all these attributes, newest *created* first. A malformed
        name or value raises :class:`~workers.attrs.InvalidRunAttribute`; reading needs no allow-list.
        """
        return self.backend.runs.list_runs(
            status=RunStatus(status) if status is not None else None, workflow_id=workflow_id,
            wait_reason=WaitReason(wait_reason) if wait_reason is not None else None, limit=limit,
            attrs=query_attrs(attrs) if attrs else None)

    def count(self, *, status: RunStatus | str | None = None, workflow_id: str | None = None,
              attrs: AttrValues | None = None) -> int:
        """How many runs have ``status`` (or are of ``workflow_id``; or exist), from the indexes.

        With two filters, or ``attrs``, the runs of the smallest index are loaded and counted.
        """
        if attrs or (status is not None and workflow_id is not None):
            return len(self.list_runs(status=status, workflow_id=workflow_id, attrs=attrs, limit=10**9))
        return self.backend.count_runs(status=status, workflow_id=workflow_id)

    def wait_for(self, run_id: str, statuses: Iterable[RunStatus | str] | None = None, *,
                 timeout: float = 30.0) -> RunState:
        """Block until the run has one of ``statuses`` (default: waiting or terminal).

        Follows the events stream (blocking reads) rather than polling the run. Raises
        :class:`WaitTimeout` with the last state seen.
        """
        wanted = {RunStatus(s) for s in statuses} if statuses is not None else {RunStatus.WAITING, *TERMINAL}
        deadline = time.monotonic() + timeout
        # The id of the newest event first, so that no commit between it and the read is missed.
        last = self.backend.last_event_id()
        names = {s.value for s in wanted}
        state = self.get_state(run_id)
        while True:
            if state.status in wanted:
                return state
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(run_id, wanted, timeout, state)
            events = self.backend.follow_events(last_id=last, block_ms=max(1, int(min(left, 1.0) * 1000)),
                                                count=1000)
            if events:
                last = events[-1][0]
            # The state is read again only when this run committed a wanted status (or after a
            # second without events, in case the capped events stream dropped an entry).
            if not events or any(e.get("run_id") == run_id and e.get("status") in names for _id, e in events):
                state = self.get_state(run_id)

    # -- changing --------------------------------------------------------------------------------

    def resume(self, run_id: str, *, wait_key: str, payload: Any, by: str | None = None) -> RunState:
        """Deliver ``payload`` to a run waiting on ``wait_key`` and send its tick.

        The key must be the run's own: :class:`WaitKeyMismatch` otherwise. A run sleeping
        until a time or waiting for a child run is not resumed this way (:class:`WaitNotEnded`;
        see :meth:`wake`). Nothing is changed when the resume is refused. The delivery is a
        ``wait_resume`` ledger record naming ``by`` (default: ``ABSTRACTRUNTIME_ACTOR`` or user@host).
        """
        return self.engine.resume(run_id, wait_key=wait_key, payload=payload, action="resume",
                                  by=by or operator_actor())

    def respond(self, run_id: str, answer: Any, *, by: str | None = None) -> RunState:
        """Answer a run's question (ask_user); its wait key is looked up, not needed.

        Only a person's question is answered: a run waiting for an event, a timer or a child
        run raises :class:`WaitNotEnded` naming what it waits for, and is left as it was. A
        run with several named questions open raises :class:`~runtime.waitset.AmbiguousWait`
        naming them (answer one with :meth:`answer`). The answer is a ``wait_answer`` ledger
        record naming ``by`` (default: ``ABSTRACTRUNTIME_ACTOR`` or user@host).
        """
        return self.engine.resume(run_id, wait_key=None, payload=answer, action="respond", by=by or operator_actor())

    def emit(self, wait_key: str, payload: Any, *, by: str | None = None) -> list[str]:
        """Resume every run waiting on ``wait_key``, and deliver to every named wait of that
        key; returns the run ids. Each delivery is a ``wait_emit`` ledger record naming ``by``."""
        return self.engine.emit(wait_key, payload, by=by or operator_actor())

    def answer(self, run_id: str, wait_name: str, payload: Any, answered_by: str, answer_id: str | None = None
               ) -> RunState:
        """Answer the named wait ``wait_name`` of a run (``runtime/waitset.py``); returns the run.

        The payload is checked against the wait's schema before anything is written
        (:class:`~runtime.answers.InvalidAnswer`, no ledger record). Refused, with nothing
        written: :class:`~runtime.waitset.UnknownWait` (no such open wait; it lists the open
        ones), :class:`~runtime.waitset.WaitClosed` (answered already: by whom and when;
        :class:`~runtime.waitset.WaitExpired` past its deadline), :class:`~runtime.waitset.NotAssignee`
        (the wait enforces its assignees), :class:`~runtime.waitset.AnswerTooLarge`. A valid
        answer is one ``wait_answer`` ledger record naming the wait, ``answered_by`` and the
        answer (its SHA-256 when over 4 KiB); answers to different waits of one run commute.
        ``answer_id``: the same on each retry of one submit, so that a retry after a lost reply
        is not refused as a second answer.
        """
        return self.engine.answer(run_id, wait_name, payload, answered_by=answered_by, answer_id=answer_id)

    def list_waits(self, *, assignee: str | None = None, overdue: bool = False, workflow: str | None = None,
                   root_run_id: str | None = None, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """Open named waits from the indexes (no scan): those assigned to ``assignee`` or
        ``overdue`` soonest deadline first, else oldest first; ``root_run_id`` gives the waits of
        a run and of every run below it. Each is a dict: run_id, workflow_id, wait, kind, prompt,
        choices, schema, assignees, level (escalation steps taken), deadline, overdue, next_timer,
        opened_at, root_run_id."""
        if not isinstance(limit, int) or limit < 1 or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"limit must be a positive integer and offset a non-negative one (got {limit!r}, "
                             f"{offset!r})")
        return self.backend.list_open_waits(assignee=assignee, overdue=overdue, workflow_id=workflow,
                                            root_run_id=root_run_id, limit=limit, offset=offset)

    def wake(self, run_id: str, *, reason: str, actor: str | None = None) -> RunState:
        """Wake a run sleeping until a time now, before that time: an operator's decision.

        The ledger records who (``actor``, default: ``ABSTRACTRUNTIME_ACTOR`` or user@host),
        why and when. :class:`WaitNotEnded` when the run does not sleep on a timer.
        """
        return self.engine.force_wake(run_id, reason=reason, actor=actor or operator_actor())

    def cancel(self, run_id: str, *, reason: str | None = None, actor: str | None = None) -> list[RunState]:
        """Cancel a run and its children, transitively; returns the runs now cancelled.

        Each run cancelled gets an ``operator_cancel`` ledger record naming who (``actor``,
        default: ``ABSTRACTRUNTIME_ACTOR`` or user@host), why and when.
        """
        return self.engine.cancel(run_id, reason=reason, actor=actor or operator_actor())

    def retry(self, run_id: str, *, reason: str, from_node: str | None = None, actor: str | None = None
              ) -> RunState:
        """Set a failed run running again at the node that failed (or ``from_node``), after a fix.

        Earlier steps are not executed again; the ledger records who, why, from which node and
        the chain head the run continues from. A run failed by its failed child is retried
        through that child, and waits on it again. :class:`RunNotFailed` for a run that did not
        fail (cancelled runs stay cancelled); :class:`UnknownNodeError` for a ``from_node`` the
        workflow does not have (the workflow modules are imported, as for :meth:`start`).
        """
        if from_node is not None:
            self.import_workflows()
        return self.engine.retry(run_id, reason=reason, actor=actor or operator_actor(), from_node=from_node)

    # -- schedules (docs/schedules.md) ------------------------------------------------------------

    def _registered(self, workflow_id: str) -> WorkflowSpec:
        """The workflow, once the modules of ``ABSTRACTRUNTIME_IMPORTS`` are imported; else
        :class:`WorkflowNotRegistered` naming what is registered and what was imported."""
        self.import_workflows()
        workflow = self.registry.workflows.get(workflow_id)
        if workflow is None:
            known = ", ".join(sorted(self.registry.workflows.list_ids())) or "none"
            raise WorkflowNotRegistered(workflow_id, hint=f"registered here: {known}; modules imported from "
                                        f"ABSTRACTRUNTIME_IMPORTS: {', '.join(self.settings.imports) or 'none'}")
        return workflow

    def add_schedule(self, name: str, cron: str, workflow_id: str, *, timezone: str = "UTC",
                     vars: dict[str, Any] | None = None, overlap: str = "skip", catchup_s: float = 60.0,
                     jitter_s: float = 0.0, paused: bool = False, replace: bool = False) -> dict[str, Any]:
        """Start a run of ``workflow_id`` at each time of ``cron`` (5 fields, or 6 with the second
        first) in ``timezone``; returns the schedule with its next fire. Refused, nothing stored:
        :class:`~workers.schedules.InvalidSchedule` naming the field, :class:`WorkflowNotRegistered`,
        :class:`~stores.redis.schedules.ScheduleExists` (unless ``replace``). See
        :class:`~workers.schedules.Schedule` for ``overlap``, ``catchup_s`` and ``jitter_s``."""
        from .schedules import Schedule

        spec = Schedule(name=name, cron=cron, workflow_id=workflow_id, timezone=timezone, vars=dict(vars or {}),
                        overlap=overlap, catchup_s=catchup_s, jitter_s=jitter_s, paused=paused)
        self._registered(workflow_id)
        return self.engine.add_schedule(spec, replace=replace)

    def schedules(self) -> list[dict[str, Any]]:
        """Every schedule, with its last fire (and what it did) and its next."""
        return self.engine.list_schedules()

    def pause_schedule(self, name: str) -> dict[str, Any]:
        return self.engine.set_paused(name, True)

    def resume_schedule(self, name: str) -> dict[str, Any]:
        """Fire again, from the first time after now (the fires of the pause are not caught up)."""
        return self.engine.set_paused(name, False)

    def delete_schedule(self, name: str) -> None:
        from .schedules import UnknownSchedule

        if not self.backend.delete_schedule(name):
            raise UnknownSchedule(name)

    def trigger_schedule(self, name: str) -> str:
        """Start one run of the schedule's workflow now; returns its id."""
        self._registered(self.engine.get_schedule(name)["workflow_id"])
        return self.engine.trigger_schedule(name)

    def backfill_schedule(self, name: str, start: str, end: str) -> dict[str, Any]:
        """Start the runs of the fire times in [``start``, ``end``] (ISO 8601) that have none."""
        from runtime._clock import epoch_ms

        from .schedules import InvalidSchedule

        self._registered(self.engine.get_schedule(name)["workflow_id"])
        bounds = []
        for label, value in (("from", start), ("to", end)):
            try:
                bounds.append(epoch_ms(value, field=label))
            except Exception as exc:
                raise InvalidSchedule(label, str(exc)) from None
        return self.engine.backfill_schedule(name, bounds[0], bounds[1])

    def close(self) -> None:
        """Close the Redis connections, and the broker connections of an app this client made."""
        self.backend.close()
        if self._own_app and self._app is not None:
            self._app.close()
