"""The Celery app: msgpack-only messages, late acks, one queue per kind of work, and the tasks.

Workers run it with ``celery -A workers.app worker -Q ticks,llm,tools,subworkflows,timers,maintenance``
and beat with ``celery -A workers.app beat``; both read :class:`WorkerSettings` from the
environment. Tasks carry ids and numbers only; each one hands its arguments to the
:class:`~workers.engine.Engine` of its process, built on first use (after the fork of a
prefork pool, so no Redis connection is shared across processes).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from typing import Any

from celery import Celery

from stores.redis import RedisBackend

from . import heartbeat, logs, metrics
from .engine import Engine
from .registry import Registry, registry
from .settings import WorkerSettings

__all__ = ["create_app", "CeleryDispatcher", "TASK_NAMES", "EFFECT_TASK_KEYS", "effect_task_name", "broker_url_of"]

logger = logging.getLogger(__name__)


class _TaskNames(dict[str, str]):
    """TASK_NAMES, which still answers the old key of the effect task on the ticks queue
    (``"ticks"``, now ``"effect_on_ticks"``) with a DeprecationWarning, for one release."""

    def __missing__(self, key: str) -> str:
        if key == "ticks":
            warnings.warn('TASK_NAMES["ticks"] is now TASK_NAMES["effect_on_ticks"] (or effect_task_name("ticks"))',
                          DeprecationWarning, stacklevel=2)
            return self["effect_on_ticks"]
        raise KeyError(key)


#: Task names by kind (Flower and ``celery inspect`` show these). The names never change:
#: messages already queued carry them, and they outlive any refactor.
TASK_NAMES = _TaskNames({
    "tick": "abstractruntime.tick",
    "wake": "abstractruntime.wake",
    "sweep": "abstractruntime.sweep",
    "flow": "abstractruntime.flow_dispatch",  # a fair-dispatch pass once a rate or budget refills
    # Effect tasks, one per queue kind an effect is sent to.
    "effect_on_ticks": "abstractruntime.effect",  # an effect retried on the ticks queue (a wait's retry)
    "llm": "abstractruntime.effect.llm",
    "tools": "abstractruntime.effect.tools",
    "subworkflows": "abstractruntime.effect.subworkflow",
})
#: The TASK_NAMES key of the effect task for each queue kind (``Dispatcher.effect``'s ``kind``).
EFFECT_TASK_KEYS = {"ticks": "effect_on_ticks", "llm": "llm", "tools": "tools", "subworkflows": "subworkflows"}


def effect_task_name(kind: str) -> str:
    """The name of the effect task sent to the queue of ``kind`` (``ticks``, ``llm``, ``tools``, ``subworkflows``)."""
    return TASK_NAMES[EFFECT_TASK_KEYS[kind]]


def broker_url_of(settings: WorkerSettings) -> str:
    """The broker URL: the configured one, else the Redis that keeps the runs (started
    embedded when no Redis URL is set; its unix socket becomes a ``redis+socket://`` URL)."""
    if settings.broker_url:
        return settings.broker_url
    url = settings.redis.url
    if url is None:
        from stores.redis.embedded import shared_embedded

        url = shared_embedded(settings.redis.data_dir, binary=settings.redis.server_binary).start()
    if url.startswith("unix://"):
        rest = url[len("unix://"):]
        password = ""
        if "@" in rest:
            userinfo, _, rest = rest.rpartition("@")
            password = userinfo.partition(":")[2]
        path, _, query = rest.partition("?")
        db = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("db", "0")
        auth = f":{password}@" if password else ""
        return f"redis+socket://{auth}{path}?virtual_host={db}"
    return url


def serve_due_timers_at_once() -> None:
    """Make the worker's event loop fire every due timer without a one-second pause.

    Kombu's ``Hub.fire_timers`` fires at most ten timer entries per loop turn and then, with
    more entries due, returns its ``min_delay`` (one second) as the next poll timeout: a
    burst of due countdowns (wakes of runs that wait until the same moment) is served ten
    per second. Measured with 50 wakes due together on a solo worker: the last ones woke
    2 s late. Passing ``min_delay=0`` while entries are queued makes the loop poll without
    waiting and fire the next ten at once; with no entries queued nothing changes.
    """
    from kombu.asynchronous.hub import Hub

    original = Hub.fire_timers
    if getattr(original, "_abstractruntime_patched", False):
        return

    def fire_timers(self: Any, min_delay: float = 1, max_delay: float = 10, max_timers: int = 10,
                    propagate: tuple[type[BaseException], ...] = ()) -> Any:
        if self.timer and self.timer._queue:
            min_delay = 0
        return original(self, min_delay=min_delay, max_delay=max_delay, max_timers=max_timers,
                        propagate=propagate)

    fire_timers._abstractruntime_patched = True  # type: ignore[attr-defined]
    Hub.fire_timers = fire_timers  # type: ignore[method-assign]


class CeleryDispatcher:
    """Sends the driver's messages to their queues (the :class:`~workers.engine.Dispatcher`)."""

    def __init__(self, app: Celery, settings: WorkerSettings, *, tolerant: bool = False) -> None:
        self.app = app
        self.settings = settings
        #: Log a message that could not be sent instead of raising (producers: the commit is
        #: in, and the run's lease makes the sweep send the message once the broker is back).
        self.tolerant = tolerant
        self._q_ticks = settings.queue("ticks")
        self._q_timers = settings.queue("timers")

    def _send(self, name: str, args: list[Any], queue: str, countdown: float, *, workflow: str | None,
              node: str | None, attempt: int = 1, token: int | None = None) -> None:
        try:
            self.app.send_task(name, args=args, queue=queue, countdown=countdown or None,
                               argsrepr=_argsrepr(args[0], workflow, node, args[1], attempt, token))
        except Exception as exc:
            if not self.tolerant:
                raise
            logger.warning("could not send %s for run %s to the broker (%s: %s); the sweep sends it once the "
                           "run's lease expires", name, args[0], type(exc).__name__, exc)

    # ``workflow`` and ``node`` only label the message for Flower and ``celery inspect``
    # (its ``argsrepr``); the task reads the run from Redis.
    # The fencing token goes last, and only when known, so that a message without one (sent
    # by an older producer) keeps its shape.
    def tick(self, run_id: str, version: int | None, *, countdown: float = 0.0, attempt: int = 1,
             workflow: str | None = None, node: str | None = None, token: int | None = None) -> None:
        args: list[Any] = [run_id, version, attempt] if token is None else [run_id, version, attempt, token]
        self._send(TASK_NAMES["tick"], args, self._q_ticks, countdown, workflow=workflow, node=node, attempt=attempt,
                   token=token)

    def effect(self, kind: str, run_id: str, version: int | None, key: str, attempt: int, *,
               countdown: float = 0.0, workflow: str | None = None, node: str | None = None,
               token: int | None = None) -> None:
        args: list[Any] = [run_id, version, key, attempt] if token is None else [run_id, version, key, attempt, token]
        self._send(effect_task_name(kind), args, self.settings.queue(kind), countdown, workflow=workflow, node=node,
                   attempt=attempt, token=token)

    def wake(self, run_id: str, version: int | None, *, countdown: float = 0.0, workflow: str | None = None,
             node: str | None = None) -> None:
        self._send(TASK_NAMES["wake"], [run_id, version], self._q_timers, countdown, workflow=workflow, node=node)

    def flow(self, *, countdown: float = 0.0) -> None:
        try:
            self.app.send_task(TASK_NAMES["flow"], args=[], queue=self._q_ticks, countdown=countdown or None)
        except Exception as exc:  # the sweep runs a pass too
            if not self.tolerant:
                raise
            logger.warning("could not send a fair-dispatch pass (%s: %s); the sweep runs one", type(exc).__name__, exc)


def _argsrepr(run_id: str, workflow: str | None, node: str | None, version: int | None, attempt: int,
              token: int | None = None) -> str:
    """What Flower and ``celery inspect`` show for a message: ``run=f8f5ae60 wf=deploy node=ask v=4 t=5``."""
    parts = [f"run={logs.short_run_id(run_id)}"]
    if workflow:
        parts.append(f"wf={workflow}")
    if node:
        parts.append(f"node={node}")
    if version is not None:
        parts.append(f"v={version}")
    if token is not None:
        parts.append(f"t={token}")
    if attempt > 1:
        parts.append(f"attempt={attempt}")
    return " ".join(parts)


class _Holder:
    """The engine of this process, built on first use."""

    def __init__(self, app: Celery, settings: WorkerSettings, reg: Registry) -> None:
        self.app, self.settings, self.registry = app, settings, reg
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def get(self) -> Engine:
        engine = self._engine
        if engine is None:
            with self._lock:
                if self._engine is None:
                    self.registry.import_modules(self.settings.imports)
                    backend = RedisBackend.from_settings(self.settings.redis, signer=self.settings.signing.signer())
                    self._engine = Engine(backend, self.registry, self.settings,
                                          CeleryDispatcher(self.app, self.settings))
                engine = self._engine
        return engine


def create_app(settings: WorkerSettings | None = None, *, reg: Registry | None = None,
               main: str = "abstractruntime") -> Celery:
    """A Celery app for ``settings`` (default: from the environment) with the driver's tasks."""
    settings = settings if settings is not None else WorkerSettings.from_env()
    reg = reg if reg is not None else registry
    serve_due_timers_at_once()
    metrics.prepare_environment()  # ABSTRACTRUNTIME_METRICS_DIR, before any prometheus_client import
    app = Celery(main, broker=broker_url_of(settings), set_as_current=False)
    q = settings.queue
    transport: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout_s,
                                 "ack_emulation": settings.ack_emulation}
    app.conf.update(
        # Messages are msgpack and nothing else: accept_content lists no other type.
        task_serializer="msgpack",
        accept_content=["msgpack"],
        result_serializer="msgpack",
        result_accept_content=["msgpack"],
        task_ignore_result=True,
        # A task is acknowledged after it ran; one whose worker died goes back to the queue.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=settings.prefetch,
        task_default_queue=q("ticks"),
        task_routes={
            TASK_NAMES["tick"]: {"queue": q("ticks")},
            **{TASK_NAMES[key]: {"queue": q(kind)} for kind, key in EFFECT_TASK_KEYS.items()},
            TASK_NAMES["wake"]: {"queue": q("timers")},
            TASK_NAMES["sweep"]: {"queue": q("maintenance")},
            TASK_NAMES["flow"]: {"queue": q("ticks")},
        },
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        # Beat keeps its schedule in memory (the default writes a shelve file, which is not msgpack).
        beat_scheduler="celery.beat:Scheduler",
        beat_schedule={
            "abstractruntime-sweep": {
                "task": TASK_NAMES["sweep"],
                "schedule": settings.sweep_period_s,
                "options": {"queue": q("maintenance"), "expires": max(settings.sweep_period_s * 5, 5.0)},
            },
        },
        worker_hijack_root_logger=False,
        # The workflow modules are imported when the worker boots (an import error stops it
        # there, not at its first task), and may define Celery tasks of their own.
        imports=list(settings.imports),
    )
    # Each task logs one outcome line itself; in a worker or beat, Celery's own INFO lines
    # about these tasks ("received", "succeeded", "Sending due task") are dropped, and every
    # record gets the run id of the task that logged it (workers/logs.py, docs/logging.md).
    logs.connect(TASK_NAMES.values(), log_format=os.environ.get("ABSTRACTRUNTIME_LOG_FORMAT", "text"))
    heartbeat.connect()  # each worker and beat says it is alive (workers/heartbeat.py)
    holder = _Holder(app, settings, reg)
    # shared=False: the tasks belong to this app only (Celery would otherwise add them to every
    # app made later in the process, and a second create_app would register them twice).
    app.abstractruntime = holder  # type: ignore[attr-defined]

    # The tasks take *args and check them: a malformed message (wrong count, wrong types, a run
    # id no store can hold) or a run whose stored state no longer decodes goes to the
    # dead-letter list with its reason, instead of failing in Celery's argument binding or
    # being sent again by the sweep forever.
    @app.task(name=TASK_NAMES["tick"], shared=False)
    def tick(*args: Any) -> Any:
        return _traced(holder, "tick", args, (1, 4),
                       lambda e: e.task(args[0], lambda: e.tick(*_padded(args, (None, 1)))))

    @app.task(name=TASK_NAMES["wake"], shared=False)
    def wake(*args: Any) -> Any:
        return _traced(holder, "wake", args, (1, 2), lambda e: e.task(args[0], lambda: e.wake(*_padded(args, (None,)))))

    @app.task(name=TASK_NAMES["sweep"], shared=False)
    def sweep(*args: Any) -> Any:
        return _traced(holder, "sweep", args, (0, 0), lambda e: e.sweep())

    @app.task(name=TASK_NAMES["flow"], shared=False)
    def flow_dispatch(*args: Any) -> Any:
        return _traced(holder, "flow", args, (0, 0), lambda e: e.flow_dispatch())

    def effect_of(name: str) -> Any:
        label = name.removeprefix("abstractruntime.")

        def effect(*args: Any) -> Any:
            return _traced(holder, "effect", args, (4, 5), lambda e: e.task(args[0], lambda: e.effect(*args)),
                           label=label)

        return effect

    for key in EFFECT_TASK_KEYS.values():
        app.task(name=TASK_NAMES[key], shared=False)(effect_of(TASK_NAMES[key]))
    return app


def _traced(holder: _Holder, task: str, args: tuple[Any, ...], arity: tuple[int, int], call: Any, *,
            label: str | None = None) -> Any:
    """Run a task with its run id in the logging context, and log its one outcome line."""
    run_id = logs.run_id_of(args)
    at = {"tick": 2, "effect": 3}.get(task)
    attempt = args[at] if at is not None and len(args) > at and type(args[at]) is int else 1
    t0 = time.perf_counter()
    seen: dict[str, Any] = {"workflow": None, "result": None}  # None, None: it raised
    try:
        with logs.task_outcome(logger, label or task, run_id, attempt=attempt) as outcome:
            outcome.result = seen["result"] = _guarded(holder.get(), task, args, arity, call)
            seen["workflow"] = logs.current_workflow()
            return outcome.result
    finally:  # counted after its outcome line (docs/metrics.md); a no-op with metrics off
        metrics.task_done(label or task, seen["workflow"], seen["result"], time.perf_counter() - t0)


def _padded(args: tuple[Any, ...], defaults: tuple[Any, ...]) -> tuple[Any, ...]:
    return (*args, *defaults[len(args) - 1:]) if len(args) - 1 < len(defaults) else args


def _check_args(task: str, args: tuple[Any, ...], arity: tuple[int, int]) -> str | None:
    """Why a message's arguments are malformed, or None."""
    from runtime.models import validate_run_id

    low, high = arity
    if not low <= len(args) <= high:
        return f"{len(args)} arguments, expected {low}" + (f" to {high}" if high != low else "")
    if not args:
        return None
    if not isinstance(args[0], str):
        return f"run id of type {type(args[0]).__name__}"
    try:
        validate_run_id(args[0])
    except ValueError as exc:
        return str(exc)
    if len(args) > 1 and args[1] is not None and (type(args[1]) is not int or args[1] < 0):
        return f"version {args[1]!r} is not a whole number"
    if task == "tick" and len(args) > 2 and (type(args[2]) is not int or not 1 <= args[2] <= 1000):
        return f"attempt {args[2]!r} is not a whole number from 1 to 1000"
    if task == "effect":
        if not isinstance(args[2], str) or not 0 < len(args[2]) <= 200:
            return f"idempotency key {args[2]!r:.60} is not a text of 1 to 200 characters"
        if type(args[3]) is not int or not 1 <= args[3] <= 1000:
            return f"attempt {args[3]!r} is not a whole number from 1 to 1000"
    at = {"tick": 3, "effect": 4}.get(task)
    if at is not None and len(args) > at and args[at] is not None and (type(args[at]) is not int or args[at] < 0):
        return f"fencing token {args[at]!r:.60} is not a whole number"
    return None


def _guarded(engine: Engine, task: str, args: tuple[Any, ...], arity: tuple[int, int],
             call: Any) -> Any:
    from runtime.errors import CorruptRecordError, InvalidRunId

    problem = _check_args(task, args, arity)
    if problem is not None:
        engine.dead_letter(task, args, problem)
        return "rejected"
    try:
        return call(engine)
    except (CorruptRecordError, InvalidRunId) as exc:
        engine.dead_letter(task, args, f"{type(exc).__name__}: {exc}")
        run_id = getattr(exc, "run_id", None)
        if run_id:
            engine.backend.clear_dispatch(run_id)  # stop the sweep re-sending a run that cannot load
        return "rejected"


_default_app: Celery | None = None
_default_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    """``workers.app.app``: the app of the environment's settings, made on first access, so
    that ``celery -A workers.app`` finds it and importing this module starts nothing."""
    global _default_app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _default_lock:
        if _default_app is None:
            _default_app = create_app()
        return _default_app
