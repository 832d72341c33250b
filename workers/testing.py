"""Run workflows through the Celery driver's engine in one process, without Celery or workers.

:class:`StubDispatcher` is a :class:`~workers.engine.Dispatcher` that keeps each message the
engine sends (a tick, an effect task, a wake) instead of sending it to a broker.
:meth:`StubDispatcher.drain` then delivers them to the engine one by one, in order, exactly
as the Celery tasks of ``workers.app`` would: the same engine code runs, on the same Redis
keys, with the same commits, ledgers, leases and indexes. A countdown (a retry's backoff,
a node's retry) is due on the stub's own clock, which only :meth:`~StubDispatcher.advance`
moves, so a test never sleeps for a backoff::

    import fakeredis
    from stores.redis import RedisBackend
    from workers.testing import make_stub_engine

    engine, stub = make_stub_engine(RedisBackend(fakeredis.FakeRedis()), my_registry)
    run_id = engine.create(my_workflow)
    stub.run_until_quiet(engine)                 # ticks, effects and retries, in order
    engine.resume(run_id, wait_key=..., payload={"approved": True})
    stub.run_until_quiet(engine)

What it does not simulate: worker processes, their death and the broker's redelivery
(:meth:`~StubDispatcher.redeliver` and :meth:`~StubDispatcher.drop` stand in for both),
concurrency, serialisation of messages, and real time. WAIT_UNTIL is judged by the *Redis*
clock, which the stub does not move: see :meth:`~StubDispatcher.wake_due` and
``docs/testing.md``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from dataclasses import dataclass
from typing import Any, Literal

from runtime.errors import AbstractRuntimeError
from stores.redis import RedisBackend

from . import logs
from .app import TASK_NAMES, effect_task_name
from .engine import Engine
from .registry import Registry
from .settings import WorkerSettings

__all__ = ["StubDispatcher", "StubMessage", "Delivery", "DrainLimitReached", "make_stub_engine",
           "DEFAULT_MAX_MESSAGES"]

logger = logging.getLogger(__name__)

#: Messages one drain delivers at most before it raises :class:`DrainLimitReached`.
DEFAULT_MAX_MESSAGES = 10_000

#: What a message asks for: a tick of a run's node, an effect attempt, or a timer's wake.
MessageKind = Literal["tick", "effect", "wake", "flow"]


@dataclass(frozen=True)
class StubMessage:
    """One message the engine sent: what a Celery task would have received."""

    #: Sending order in this stub, from 1.
    seq: int
    kind: MessageKind
    #: The Celery task it would run (``abstractruntime.tick``, ``abstractruntime.effect.llm``...).
    task: str
    #: The task's arguments, as the Celery message carries them.
    args: tuple[Any, ...]
    #: The queue kind it would go to (``ticks``, ``llm``, ``tools``, ``subworkflows``, ``timers``).
    queue: str
    #: Seconds the engine asked it to wait before delivery.
    countdown: float
    #: When it is due, on the stub clock (the clock when sent, plus the countdown).
    due: float
    #: Labels for people (Flower shows them); the engine never reads them.
    workflow: str | None = None
    node: str | None = None

    @property
    def run_id(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Delivery:
    """A delivered message and what the engine returned (``next``, ``park``, ``stale``...)."""

    message: StubMessage
    result: str
    #: The stub clock at delivery.
    at: float


class DrainLimitReached(AbstractRuntimeError, RuntimeError):
    """Raised when a drain delivered ``max_messages`` and more were still due (a run that never rests)."""

    def __init__(self, delivered: int, pending: list[StubMessage]) -> None:
        self.delivered = delivered
        self.pending = pending
        runs = sorted({m.run_id for m in pending})
        super().__init__(f"the stub delivered {delivered} messages and {len(pending)} more are still queued "
                         f"(runs: {', '.join(runs[:5])}{'...' if len(runs) > 5 else ''}); a workflow that "
                         f"never waits or ends? Pass a larger max_messages if it is only long")


class StubDispatcher:
    """A recording :class:`~workers.engine.Dispatcher` whose messages a test delivers in process.

    Each message sent is appended to :attr:`sent` (every message, ever) and queued; the
    queue is ordered by due time on the stub clock (:attr:`now`, seconds, starting at
    ``now``), then by sending order. Nothing is delivered while the engine sends: delivery
    happens only in :meth:`drain` and its siblings, never inside an engine call.
    """

    def __init__(self, *, now: float = 0.0) -> None:
        #: The stub clock, in seconds; only :meth:`advance` and the drains move it.
        self.now = float(now)
        #: Every message the engine sent through this stub, in sending order.
        self.sent: list[StubMessage] = []
        self._queue: list[tuple[float, int, StubMessage]] = []
        self._seq = itertools.count(1)

    # -- the Dispatcher protocol -----------------------------------------------------------------

    # The arguments are the ones the Celery message carries (the fencing token last, when known).
    def tick(self, run_id: str, version: int | None, *, countdown: float = 0.0, attempt: int = 1,
             workflow: str | None = None, node: str | None = None, token: int | None = None) -> None:
        args = (run_id, version, attempt) if token is None else (run_id, version, attempt, token)
        self._put("tick", TASK_NAMES["tick"], args, "ticks", countdown, workflow, node)

    def effect(self, kind: str, run_id: str, version: int | None, key: str, attempt: int, *,
               countdown: float = 0.0, workflow: str | None = None, node: str | None = None,
               token: int | None = None) -> None:
        args = (run_id, version, key, attempt) if token is None else (run_id, version, key, attempt, token)
        self._put("effect", effect_task_name(kind), args, kind, countdown, workflow, node)

    def wake(self, run_id: str, version: int | None, *, countdown: float = 0.0, workflow: str | None = None,
             node: str | None = None) -> None:
        self._put("wake", TASK_NAMES["wake"], (run_id, version), "timers", countdown, workflow, node)

    def flow(self, *, countdown: float = 0.0) -> None:
        self._put("flow", TASK_NAMES["flow"], (), "ticks", countdown, None, None)

    def _put(self, kind: MessageKind, task: str, args: tuple[Any, ...], queue: str, countdown: float,
             workflow: str | None, node: str | None) -> None:
        countdown = max(0.0, float(countdown or 0.0))
        message = StubMessage(seq=next(self._seq), kind=kind, task=task, args=args, queue=queue,
                              countdown=countdown, due=self.now + countdown, workflow=workflow, node=node)
        self.sent.append(message)
        self._enqueue(message)

    def _enqueue(self, message: StubMessage) -> None:
        heapq.heappush(self._queue, (message.due, message.seq, message))

    # -- looking at the queue --------------------------------------------------------------------

    @property
    def pending(self) -> list[StubMessage]:
        """The queued messages, in delivery order (due time, then sending order)."""
        return [m for _due, _seq, m in sorted(self._queue)]

    def advance(self, seconds: float) -> None:
        """Move the stub clock ``seconds`` ahead; the next :meth:`drain` delivers what became due.

        The Redis clock does not move: a run waiting until a time is not due because of this.
        """
        if seconds < 0:
            raise ValueError(f"the stub clock only moves forward, got {seconds!r}")
        self.now += seconds

    # -- delivering ------------------------------------------------------------------------------

    def drain(self, engine: Engine, *, until: float | None = None,
              max_messages: int = DEFAULT_MAX_MESSAGES) -> list[Delivery]:
        """Deliver every message due on the stub clock, and those they send that are due too.

        Messages go in order of due time, then of sending. With ``until`` (a time on the stub
        clock) the clock moves forward through each due time up to ``until``, so countdowns
        falling due on the way are delivered in their turn; the clock ends at ``until``.

        Returns what each delivery returned. An exception raised by the engine propagates
        (that message is consumed, as Celery acknowledges a task that raised).

        Raises:
            DrainLimitReached: ``max_messages`` were delivered and more are due.
        """
        if until is not None and until < self.now:
            raise ValueError(f"until={until!r} is before the stub clock ({self.now!r})")
        out: list[Delivery] = []
        self._deliver_due(engine, self.now if until is None else until, out, max_messages)
        if until is not None:
            self.now = until
        return out

    def run_until_quiet(self, engine: Engine, *, max_messages: int = DEFAULT_MAX_MESSAGES) -> list[Delivery]:
        """Deliver messages, moving the stub clock to each countdown, until only wakes are left.

        The runs then wait (for a person, an event, a timer or a child) or have ended. Wakes
        are not waited for: a run is due by the Redis clock, which the stub does not move
        (:meth:`wake_due` delivers them once real time has passed).
        """
        out: list[Delivery] = []
        while True:
            self._deliver_due(engine, self.now, out, max_messages)
            later = [due for due, _seq, m in self._queue if m.kind != "wake"]
            if not later:
                return out
            self.now = max(self.now, min(later))

    def wake_due(self, engine: Engine, *, max_messages: int = DEFAULT_MAX_MESSAGES) -> list[Delivery]:
        """Deliver every queued wake now, whatever its stub due time, then what is due.

        The engine judges each by the Redis clock: a run whose time has come wakes and runs
        on; for one whose time has not, the engine sends its wake again with the time left
        (``early``), and that wake stays queued. Call it after real time has passed (a
        workflow waiting 0.2 s, ``time.sleep(0.25)``), or use ``until`` times in the past.
        """
        wakes = sorted((m for _due, _seq, m in self._queue if m.kind == "wake"), key=lambda m: m.seq)
        self._queue = [entry for entry in self._queue if entry[2].kind != "wake"]
        heapq.heapify(self._queue)
        out: list[Delivery] = []
        for i, message in enumerate(wakes):
            self._check_budget(out, max_messages, [*wakes[i:], *self.pending])
            out.append(self._deliver(engine, message))
        self._deliver_due(engine, self.now, out, max_messages)
        return out

    def _deliver_due(self, engine: Engine, horizon: float, out: list[Delivery], max_messages: int) -> None:
        while self._queue and self._queue[0][0] <= horizon:
            self._check_budget(out, max_messages, self.pending)
            due, _seq, message = heapq.heappop(self._queue)
            self.now = max(self.now, due)
            out.append(self._deliver(engine, message))

    @staticmethod
    def _check_budget(out: list[Delivery], max_messages: int, pending: list[StubMessage]) -> None:
        if len(out) >= max_messages:
            raise DrainLimitReached(len(out), pending)

    def _deliver(self, engine: Engine, message: StubMessage) -> Delivery:
        """Run one message as its Celery task does (workers.app), with its outcome log line."""
        at = {"tick": 2, "effect": 3}.get(message.kind)
        attempt = message.args[at] if at is not None else 1
        label = message.task.removeprefix("abstractruntime.")
        with logs.task_outcome(logger, label, message.run_id, attempt=attempt) as outcome:
            if message.kind == "tick":  # (through Engine.task, as the task does: continuation included)
                result = engine.task(message.run_id, lambda: engine.tick(*message.args))
            elif message.kind == "effect":
                result = engine.task(message.run_id, lambda: engine.effect(*message.args))
            elif message.kind == "flow":
                result = str(engine.flow_dispatch())
            else:
                result = engine.wake(*message.args)
            outcome.result = result
        return Delivery(message=message, result=result, at=self.now)

    # -- what a broker does to messages ----------------------------------------------------------

    def redeliver(self, message: StubMessage, *, countdown: float = 0.0) -> StubMessage:
        """Queue a copy of ``message`` again, as a broker does after a worker died before
        acknowledging it; the engine must find it stale or harmless."""
        self._put(message.kind, message.task, message.args, message.queue, countdown, message.workflow,
                  message.node)
        return self.sent[-1]

    def drop(self, message: StubMessage) -> None:
        """Lose a queued message, as a crash between commit and dispatch does. The run's
        lease (by the Redis clock) makes ``engine.sweep()`` send it again once it expires."""
        kept = [entry for entry in self._queue if entry[2].seq != message.seq]
        if len(kept) == len(self._queue):
            raise ValueError(f"message {message.seq} ({message.task} for run {message.run_id}) is not queued")
        self._queue = kept
        heapq.heapify(self._queue)


def make_stub_engine(backend: RedisBackend, registry: Registry | None = None,
                     settings: WorkerSettings | None = None, *, now: float = 0.0) -> tuple[Engine, StubDispatcher]:
    """An :class:`~workers.engine.Engine` on ``backend`` that sends through a new stub.

    ``registry`` defaults to the process-wide one (``workers.registry.registry``, where
    ``register_workflow`` and ``@tool`` put things); ``settings`` to :class:`WorkerSettings`
    defaults (the engine reads its leases, node retries, ``nodes_per_tick`` and sweep limits).
    """
    if registry is None:
        from .registry import registry as default_registry

        registry = default_registry
    stub = StubDispatcher(now=now)
    return Engine(backend, registry, settings if settings is not None else WorkerSettings(), stub), stub
