"""The Celery driver's logic, without Celery: what a tick, an effect task, a wake and a sweep do.

Every entry point loads the run from Redis (the truth), decides with the kernel step
(``runtime.step``), commits with the version it loaded (one atomic script call), and only
then asks its :class:`Dispatcher` to send the follow-up message. Messages only nudge: a
message that finds the run moved on (stale, duplicate, redelivered, cancelled) does nothing.

What a run expects next is kept with its state, in the run hash field ``d`` (the
*dispatch*), written by the same commit:

* ``{"k": "tick"}`` — a tick of its current node;
* ``{"k": "effect", "p": PendingEffect, "r": started record or None, "q": queue kind}`` —
  an effect task (``r`` is the attempt's ``started`` record, already in the ledger);
* ``{"k": "notify"}`` — a child run ended and its parent has not been told yet;
* absent — nothing (the run waits for a person, an event or a timer, or it ended).

Each commit that expects a message also puts the run in the lease index (a sorted set
scored by expiry, by the Redis clock); the next commit of the run clears or renews it.
:meth:`Engine.sweep` (beat) re-sends what expired leases name and wakes due timers, so
a lost message, a dead worker or a crash between commit and dispatch costs one lease.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Protocol

from runtime import EffectType, RunState, RunStatus, StepRecord, VersionConflict, WaitReason, WaitState
from runtime._json import ensure_json, epoch_ms
from runtime.errors import (
    PayloadNotSerializable,
    RunAlreadyExists,
    RunNotFound,
    RunNotWaiting,
    WaitKeyMismatch,
    WaitNotEnded,
    WorkflowNotRegistered,
)
from runtime.models import EffectOutcome, validate_run_id
from runtime.runtime import child_run_id
from runtime.spec import WorkflowSpec
from runtime.step import (
    Action,
    PendingEffect,
    Transition,
    apply_cancel,
    apply_outcome,
    apply_resume,
    current_effect_call,
    execute_effect,
    start_attempt,
    step,
    wake_if_due,
)
from runtime.waits import WaitAction, check_wait_ends
from stores.redis import RedisBackend
from stores.redis.codec import ValueTooLarge

from . import logs
from .registry import Registry
from .settings import WorkerSettings

__all__ = ["Dispatcher", "Engine", "EFFECT_QUEUES"]

logger = logging.getLogger(__name__)

#: The queue kind each effect type runs on; other effects (the waits) run inside the tick.
EFFECT_QUEUES = {
    EffectType.LLM_CALL: "llm",
    EffectType.TOOL_CALLS: "tools",
    EffectType.START_SUBWORKFLOW: "subworkflows",
}

#: What the store refuses to write (a node's vars that are not JSON, a value over the limit).
_REFUSED = (PayloadNotSerializable, ValueTooLarge)

_TICK: dict[str, Any] = {"k": "tick"}
_NOTIFY: dict[str, Any] = {"k": "notify"}
#: Commits retried when a producer operation (resume, cancel) races another writer.
_CONFLICT_RETRIES = 20
#: What a producer operation's change gives ``_retrying``: the run, what to send ("tick" or
#: "none"), and optionally the records to append in the same commit.
_Change = tuple[RunState, str] | tuple[RunState, str, list[StepRecord]]
#: Refused messages kept in the dead-letter list.
DEAD_LETTERS_MAX = 10_000


class Dispatcher(Protocol):
    """Sends the follow-up messages (the Celery one lives in ``workers.app``)."""

    # ``workflow`` and ``node`` label the message (Flower shows them); the task never reads them.
    def tick(self, run_id: str, version: int | None, *, countdown: float = 0.0, attempt: int = 1,
             workflow: str | None = None, node: str | None = None) -> None: ...

    def effect(self, kind: str, run_id: str, version: int | None, key: str, attempt: int, *,
               countdown: float = 0.0, workflow: str | None = None, node: str | None = None) -> None: ...

    def wake(self, run_id: str, version: int | None, *, countdown: float = 0.0, workflow: str | None = None,
             node: str | None = None) -> None: ...


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat()


def _wait_until_by(now_ms: int) -> Any:
    """WAIT_UNTIL judged by the Redis clock (``now_ms``, read with the run), not this worker's:
    a worker whose clock runs ahead must not take a future time for a past one."""
    from runtime.effects import handle_wait_until
    from runtime.errors import InvalidTimeError

    def handle(run: RunState, effect: Any, default_next_node: str | None) -> EffectOutcome:
        until = effect.payload.get("until")
        try:
            if until and epoch_ms(until) > now_ms:
                return EffectOutcome.waiting(WaitState(
                    reason=WaitReason.UNTIL, until=str(until),
                    resume_to_node=effect.payload.get("resume_to_node") or default_next_node,
                    result_key=effect.result_key))
        except InvalidTimeError:
            pass  # the built-in handler names the problem
        return handle_wait_until(run, effect, default_next_node)

    return handle


def _copy(record: StepRecord) -> StepRecord:
    return StepRecord.from_dict(record.to_dict())


class Engine:
    """Ticks, effects, wakes and sweeps of runs kept in one :class:`RedisBackend`."""

    def __init__(self, backend: RedisBackend, registry: Registry, settings: WorkerSettings,
                 dispatcher: Dispatcher) -> None:
        self.backend = backend
        self.registry = registry
        self.settings = settings
        self.dispatcher = dispatcher
        self._tick_lease = int(settings.tick_lease_s * 1000)
        self._effect_lease = int(settings.effect_lease_s * 1000)
        # Children a START_SUBWORKFLOW handler created, ticked once the parent's commit is in
        # (per thread: a threads pool runs several effect tasks at once).
        self._local = threading.local()

    # -- helpers ---------------------------------------------------------------------------------

    def _workflow(self, workflow_id: str) -> WorkflowSpec:
        spec = self.registry.workflows.get(workflow_id)
        if spec is None:
            raise WorkflowNotRegistered(workflow_id)
        return spec

    def _handlers(self, now_ms: int | None = None) -> dict[Any, Any]:
        from runtime.effects import builtin_wait_handlers

        handlers: dict[Any, Any] = dict(builtin_wait_handlers())
        if now_ms is not None:
            handlers[EffectType.WAIT_UNTIL] = _wait_until_by(now_ms)
        handlers[EffectType.START_SUBWORKFLOW] = self._start_subworkflow
        handlers.update(self.registry.effect_handlers)
        return handlers

    def _run_effect(self, run: RunState, pending: PendingEffect, handlers: dict[Any, Any]) -> EffectOutcome:
        """Execute an effect attempt; a handler that raises is logged with its traceback (once per
        attempt, with the run id) and kept as the run's last failure, then becomes a failed
        attempt as the kernel makes it."""
        etype = pending.effect.type
        handler = handlers.get(etype)
        if handler is not None:
            def traced(r: RunState, effect: Any, default_next_node: str | None) -> EffectOutcome:
                try:
                    return handler(r, effect, default_next_node)  # type: ignore[no-any-return]
                except Exception as exc:
                    name = etype.value if isinstance(etype, EffectType) else str(etype)
                    logger.warning("run %s: %s effect of node %s raised %s (attempt %d)", r.run_id, name,
                                   pending.node_id, type(exc).__name__, pending.attempt, exc_info=exc)
                    self._keep_failure(r.run_id, exc, where=f"effect {name}", node=pending.node_id,
                                       attempt=pending.attempt)
                    raise

            handlers = {**handlers, etype: traced}
        return execute_effect(run, pending, handlers)

    def _keep_failure(self, run_id: str, exc: BaseException, *, where: str, node: str | None,
                      attempt: int) -> None:
        """Keep the traceback with the run (outside the ledger) for ``status`` and any UI."""
        try:
            self.backend.set_last_failure(run_id, {
                "where": where, "node": node, "attempt": attempt, "type": type(exc).__name__,
                "message": str(exc)[:2000], "at": _iso(self.backend.time_ms()),
                "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            })
        except Exception as keep_exc:  # keeping it is a courtesy: never let it change the outcome
            logger.warning("run %s: could not keep the failure's traceback: %s", run_id, keep_exc)

    def _commit(self, run: RunState, records: list[StepRecord], version: int, *,
                dispatch: dict[str, Any] | None = None, lease_ms: int | None = None) -> int:
        v = self.backend.commit(run, records, expected_version=version, dispatch=dispatch, lease_ms=lease_ms)
        logs.note(run.run_id, version=v)  # the version the task's outcome line shows
        return v

    def _terminal_dispatch(self, run: RunState) -> tuple[dict[str, Any] | None, int | None]:
        """A run that ended tells its parent; until it has, the lease keeps it in the sweep."""
        return (_NOTIFY, self._tick_lease) if run.parent_run_id else (None, None)

    # -- the tick task ---------------------------------------------------------------------------

    def tick(self, run_id: str, version: int | None = None, attempt: int = 1) -> str:
        """Run the current node of a run (up to ``nodes_per_tick`` effect-free nodes).

        Returns what happened, for logs and tests: ``"missing"``, ``"stale"``, or the action.
        """
        loaded = self.backend.load_for_driver(run_id)
        if loaded is None:
            logger.warning("tick: run %s does not exist", run_id)
            return "missing"
        run, v, d, now_ms = loaded
        logs.note(run_id, workflow=run.workflow_id, node=run.current_node, version=v)
        kind = d.get("k") if d else None
        if kind == "notify":
            self._notify_parent(run)
            return "notified"
        if run.status != RunStatus.RUNNING or kind != "tick" or (version is not None and version != v):
            return "stale"
        return self._advance(run, v, now_ms, attempt)

    def _advance(self, run: RunState, v: int, now_ms: int, attempt: int = 1) -> str:
        rid = run.run_id
        for n in range(self.settings.nodes_per_tick):
            node = run.current_node
            logs.note(rid, node=node)
            try:
                workflow = self._workflow(run.workflow_id)
                tr = step(run, workflow, ctx=self.registry.context, policy=self.registry.effect_policy)
            except Exception as exc:  # D5: the tick policy decides, then the run fails
                return self._node_failed(rid, v, node, exc, attempt)
            try:
                if tr.action is Action.NEXT:
                    v = self._commit(run, [], v, dispatch=_TICK, lease_ms=self._tick_lease)
                    attempt = 1  # the next node's attempts are counted afresh
                    if n + 1 < self.settings.nodes_per_tick:
                        continue
                    self.dispatcher.tick(rid, v, workflow=run.workflow_id, node=run.current_node)
                    return "next"
                if tr.action is Action.EXECUTE:
                    assert tr.pending is not None
                    return self._execute(run, v, tr.pending, now_ms)
                return self._land(run, v, tr, tr.records, now_ms)
            except VersionConflict:
                logger.debug("tick: run %s moved by another writer; this tick's work is dropped", rid)
                return "stale"
            except _REFUSED as exc:  # what the node left cannot be stored: a node failure (D5)
                return self._node_failed(rid, v, node, exc, attempt)
        return "next"  # pragma: no cover - the loop always returns

    def _execute(self, run: RunState, v: int, pending: PendingEffect, now_ms: int) -> str:
        """An effect requested by a node: waits run here; LLM, tools and subworkflows go to their queue."""
        record = start_attempt(run, pending)
        kind = EFFECT_QUEUES.get(EffectType(pending.effect.type))
        if kind is None:
            started = _copy(record)
            outcome = self._run_effect(run, pending, self._handlers(now_ms))
            tr = apply_outcome(run, pending, outcome, record=record, policy=self.registry.effect_policy)
            return self._land(run, v, tr, [started, *tr.records], now_ms)
        dispatch = {"k": "effect", "p": pending.to_dict(), "r": record.to_dict(), "q": kind}
        v = self._commit(run, [record], v, dispatch=dispatch, lease_ms=self._effect_lease)
        self.dispatcher.effect(kind, run.run_id, v, pending.idempotency_key, pending.attempt,
                             workflow=run.workflow_id, node=run.current_node)
        return "execute"

    def _land(self, run: RunState, v: int, tr: Transition, records: list[StepRecord], now_ms: int) -> str:
        """Commit an effect's outcome (or a completion) and send what comes next."""
        rid = run.run_id
        if tr.raise_after is not None:  # an effect completed in a plan going nowhere (D5)
            self._fail(run, records, str(tr.raise_after), tr.raise_after)
            dispatch, lease = self._terminal_dispatch(run)
            self._commit(run, records, v, dispatch=dispatch, lease_ms=lease)
            self._after_end(run)
            return "failed"
        if tr.action is Action.NEXT:
            v = self._commit(run, records, v, dispatch=_TICK, lease_ms=self._tick_lease)
            self._tick_children()
            self.dispatcher.tick(rid, v, workflow=run.workflow_id, node=run.current_node)
            return "next"
        if tr.action is Action.PARK:
            v = self._commit(run, records, v)
            self._tick_children()
            w = run.waiting
            if w is not None and w.reason == WaitReason.UNTIL and w.until:
                self.dispatcher.wake(rid, v, countdown=max(0.0, (epoch_ms(w.until) - now_ms) / 1000),
                                     workflow=run.workflow_id, node=run.current_node)
            return "park"
        if tr.action is Action.RETRY:
            assert tr.pending is not None
            kind = EFFECT_QUEUES.get(EffectType(tr.pending.effect.type), "ticks")
            dispatch = {"k": "effect", "p": tr.pending.to_dict(), "r": None, "q": kind}
            v = self._commit(run, records, v, dispatch=dispatch,
                             lease_ms=int(tr.retry_in_s * 1000) + self._effect_lease)
            self.dispatcher.effect(kind, rid, v, tr.pending.idempotency_key, tr.pending.attempt,
                                   countdown=tr.retry_in_s, workflow=run.workflow_id, node=run.current_node)
            return "retry"
        dispatch, lease = self._terminal_dispatch(run)
        self._commit(run, records, v, dispatch=dispatch, lease_ms=lease)
        self._after_end(run)
        return "finish"

    def _node_failed(self, rid: str, v: int, node: str | None, exc: Exception, attempt: int) -> str:
        """A node handler raised: retry the tick with backoff, then fail the run with a record (D5)."""
        self._keep_failure(rid, exc, where="node", node=node, attempt=attempt)
        if attempt < self.settings.tick_max_attempts:
            delay = self.settings.tick_backoff_s * (2 ** (attempt - 1))
            logger.warning("run %s: node %s raised %s (attempt %d of %d); retrying in %.1fs", rid, node,
                           type(exc).__name__, attempt, self.settings.tick_max_attempts, delay, exc_info=exc)
            self.backend.renew_lease(rid, int(delay * 1000) + self._tick_lease)
            self.dispatcher.tick(rid, v, countdown=delay, attempt=attempt + 1, node=node)
            return "retry"
        loaded = self.backend.load_for_driver(rid)
        if loaded is None or loaded[1] != v:
            return "stale"
        run = loaded[0]
        record = StepRecord.start(run=run, node_id=node or "", effect=None)
        message = f"Node '{node}' raised {type(exc).__name__}: {exc}"
        self._fail(run, [record], message, exc)
        logger.error("run %s failed: %s (attempt %d of %d)", rid, message, attempt, self.settings.tick_max_attempts,
                     exc_info=exc)
        dispatch, lease = self._terminal_dispatch(run)
        try:
            self._commit(run, [record], v, dispatch=dispatch, lease_ms=lease)
        except VersionConflict:
            return "stale"
        self._after_end(run)
        return "failed"

    @staticmethod
    def _fail(run: RunState, records: list[StepRecord], message: str, exc: BaseException) -> None:
        if records and records[-1].status == "started":
            records[-1].finish_failure(message)
        else:
            record = StepRecord.start(run=run, node_id=run.current_node or "", effect=None)
            record.finish_failure(message)
            records.append(record)
        run.status = RunStatus.FAILED
        run.error = message
        run.updated_at = records[-1].ended_at or run.updated_at

    # -- effect tasks ----------------------------------------------------------------------------

    def effect(self, run_id: str, version: int | None, key: str, attempt: int) -> str:
        """Execute one attempt of a run's pending effect and commit its outcome."""
        loaded = self.backend.load_for_driver(run_id)
        if loaded is None:
            return "missing"
        run, v, d, now_ms = loaded
        logs.note(run_id, workflow=run.workflow_id, node=run.current_node, version=v)
        p = d.get("p") if d and d.get("k") == "effect" else None
        if (run.status != RunStatus.RUNNING or not isinstance(p, dict) or p.get("idempotency_key") != key
                or p.get("attempt") != attempt or (version is not None and version != v)):
            return "stale"  # cancelled, landed already, or another attempt's message
        pending = PendingEffect.from_dict(p)
        if d and d.get("r"):
            record = StepRecord.from_dict(d["r"])
            record.prev_hash = record.record_hash = None
        else:  # a retry: its `started` record goes in now, and is remembered in the dispatch
            record = start_attempt(run, pending)
            try:
                self.backend.append([_copy(record)], run_id=run.run_id,
                                    dispatch={**d, "r": record.to_dict()} if d else None)
            except VersionConflict:
                return "stale"
        self._local.children = []
        started = record.to_dict()
        outcome = self._run_effect(run, pending, self._handlers())
        tr = apply_outcome(run, pending, outcome, record=record, policy=self.registry.effect_policy)
        try:
            try:
                return self._land(run, v, tr, tr.records, now_ms)
            except _REFUSED as exc:
                # The result cannot be stored (too large, say): a failed attempt, on the run as
                # it was before this attempt.
                logger.warning("effect: run %s: the result of %s was refused: %s", run_id, key, exc)
                loaded = self.backend.load_for_driver(run_id)
                if loaded is None or loaded[1] != v:
                    return "stale"
                run = loaded[0]
                failed = EffectOutcome.failed(f"Effect result refused by the store: {exc}")
                tr = apply_outcome(run, pending, failed, record=StepRecord.from_dict(started),
                                   policy=self.registry.effect_policy)
                return self._land(run, v, tr, tr.records, now_ms)
        except VersionConflict:
            logger.info("effect: run %s moved while effect %s ran; its outcome is dropped", run_id, key)
            return "stale"

    def _start_subworkflow(self, run: RunState, effect: Any, default_next_node: str | None) -> EffectOutcome:
        """Create the child run (its id derived from this attempt, so a redelivery finds it).

        An async child is ticked once the parent's commit is in and does not block it; a sync
        child parks the parent, which resumes (or fails) when the child ends (decision D6).
        """
        payload = effect.payload
        workflow_id = payload.get("workflow_id")
        if not workflow_id:
            return EffectOutcome.failed("start_subworkflow requires payload.workflow_id")
        child_wf = self.registry.workflows.get(workflow_id)
        if child_wf is None:
            return EffectOutcome.failed(f"Workflow '{workflow_id}' not found in registry")
        call = current_effect_call.get()
        assert call is not None
        child_id = child_run_id(run.run_id, call.idempotency_key, call.attempt)
        loaded = self.backend.load_for_driver(child_id)
        child = loaded[0] if loaded is not None else None
        if child is None:
            try:
                self.create(child_wf, vars=payload.get("vars"), run_id=child_id, actor_id=run.actor_id,
                            session_id=run.session_id, parent_run_id=run.run_id, dispatch=False)
            except RunAlreadyExists:  # a duplicate of this task made it a moment ago
                pass
        to_tick: list[str] = self._local.__dict__.setdefault("children", [])
        if payload.get("async"):
            to_tick.append(child_id)
            return EffectOutcome.completed({"sub_run_id": child_id, "async": True})
        if child is not None and child.status == RunStatus.COMPLETED:
            return EffectOutcome.completed({"sub_run_id": child_id, "output": child.output})
        if child is not None and child.status.is_terminal:
            return EffectOutcome.failed(f"Subworkflow '{workflow_id}' failed: {child.error}")
        to_tick.append(child_id)
        return EffectOutcome.waiting(WaitState(
            reason=WaitReason.SUBWORKFLOW,
            wait_key=f"subworkflow:{child_id}",
            resume_to_node=payload.get("resume_to_node") or default_next_node,
            result_key=effect.result_key,
            details={"sub_run_id": child_id, "sub_workflow_id": workflow_id},
        ))

    def _tick_children(self) -> None:
        children, self._local.children = self._local.__dict__.get("children", []), []
        for child_id in children:
            self.dispatcher.tick(child_id, None)

    def _after_end(self, run: RunState) -> None:
        self._local.children = []
        if run.parent_run_id:
            self._notify_parent(run)

    def _notify_parent(self, child: RunState) -> None:
        """A child ended: resume its parent if it waits on it (with the output) or fail it."""
        parent_id = child.parent_run_id
        wait_key = f"subworkflow:{child.run_id}"
        for _ in range(_CONFLICT_RETRIES):
            loaded = self.backend.load_for_driver(parent_id) if parent_id else None
            if loaded is None:
                break
            parent, pv, _d, _now = loaded
            w = parent.waiting
            if parent.status != RunStatus.WAITING or w is None or w.wait_key != wait_key:
                break  # an async child, or the parent moved on (cancelled, resumed)
            try:
                if child.status == RunStatus.COMPLETED:
                    apply_resume(parent, wait_key=wait_key, payload={"sub_run_id": child.run_id,
                                                                     "output": child.output})
                    pv = self._commit(parent, [], pv, dispatch=_TICK, lease_ms=self._tick_lease)
                    self.dispatcher.tick(parent.run_id, pv, workflow=parent.workflow_id,
                                         node=parent.current_node)
                else:
                    record = StepRecord.start(run=parent, node_id=parent.current_node or "", effect=None)
                    ended = "was cancelled" if child.status == RunStatus.CANCELLED else "failed"
                    message = f"Subworkflow '{child.workflow_id}' {ended}: {child.error}"
                    self._fail(parent, [record], message, RuntimeError(message))
                    parent.waiting = None
                    dispatch, lease = self._terminal_dispatch(parent)
                    self._commit(parent, [record], pv, dispatch=dispatch, lease_ms=lease)
                    if parent.parent_run_id:
                        self._notify_parent(parent)
                break
            except VersionConflict:
                continue
        else:
            return  # still racing: the child's lease brings this back through the sweep
        self.backend.clear_dispatch(child.run_id)

    # -- timers ----------------------------------------------------------------------------------

    def wake(self, run_id: str, version: int | None = None) -> str:
        """Wake a run waiting until a time, if that time has come by the Redis clock, and tick it."""
        loaded = self.backend.load_for_driver(run_id)
        if loaded is None:
            return "missing"
        run, v, _d, now_ms = loaded
        logs.note(run_id, workflow=run.workflow_id, node=run.current_node, version=v)
        w = run.waiting
        # No version check: whether the run waits and is due is the whole question, and two
        # wakes of one run (countdown and sweep) race to one commit.
        if run.status != RunStatus.WAITING or w is None or w.reason != WaitReason.UNTIL or not w.until:
            return "stale"
        due_ms = epoch_ms(w.until)
        if due_ms > now_ms:  # early (a clock ahead of Redis's): never wake early, come back on time
            self.dispatcher.wake(run_id, v, countdown=(due_ms - now_ms) / 1000, workflow=run.workflow_id,
                                 node=run.current_node)
            return "early"
        wake_if_due(run, _iso(now_ms))
        try:
            v = self._commit(run, [], v, dispatch=_TICK, lease_ms=self._tick_lease)
        except VersionConflict:
            return "stale"
        return self._advance(run, v, now_ms)

    # -- refused messages ------------------------------------------------------------------------

    def dead_letter(self, task: str, args: Any, reason: str) -> None:
        """Keep a refused message and why (newest first, at most ``DEAD_LETTERS_MAX``)."""
        entry = json.dumps({"task": task, "args": repr(args)[:500], "reason": " ".join(reason.split())[:500],
                            "at": _iso(self.backend.time_ms())}, ensure_ascii=False)
        key = self.backend.keys.dead_letters()
        pipe = self.backend.client.pipeline(transaction=False)
        pipe.lpush(key, entry)
        pipe.ltrim(key, 0, DEAD_LETTERS_MAX - 1)
        pipe.execute()
        logger.warning("refused %s%s: %s", task, repr(args)[:200], reason)

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.backend.client.lrange(self.backend.keys.dead_letters(), 0, limit - 1)]

    # -- recovery --------------------------------------------------------------------------------

    def sweep(self) -> dict[str, int]:
        """Wake due timers and re-send what expired leases name; safe on many workers at once."""
        k = self.backend.keys
        counts = {"leases": 0, "timers": 0}
        now, ids = self.backend.claim_due(k.leases(), limit=self.settings.sweep_batch, hold_ms=self._tick_lease)
        self.backend.client.set(k.sweep_heartbeat(), now)
        for rid in ids:
            try:
                loaded = self.backend.load_for_driver(rid)
            except Exception as exc:  # one bad run must not stop the sweep of the others
                logger.error("sweep: cannot load run %s: %s", rid, exc)
                continue
            d = loaded[2] if loaded is not None else None
            kind = d.get("k") if d else None
            if loaded is None or kind is None:  # nothing expected: the lease outlived its dispatch
                self.backend.clear_dispatch(rid)
                continue
            v = loaded[1]
            counts["leases"] += 1
            if kind == "effect" and d is not None:
                p = d["p"]
                self.backend.renew_lease(rid, self._effect_lease)
                self.dispatcher.effect(d.get("q") or "ticks", rid, v, p["idempotency_key"], p["attempt"],
                                         workflow=loaded[0].workflow_id, node=loaded[0].current_node)
            else:
                self.dispatcher.tick(rid, v, workflow=loaded[0].workflow_id, node=loaded[0].current_node)
            logger.info("sweep: lease of run %s expired; %s sent again", rid, kind)
        _now, ids = self.backend.claim_due(k.timers(), limit=self.settings.sweep_batch,
                                           hold_ms=int(self.settings.timer_hold_s * 1000))
        for rid in ids:
            counts["timers"] += 1
            self.dispatcher.wake(rid, None)
        return counts

    # -- producer operations ---------------------------------------------------------------------

    def create(self, workflow: WorkflowSpec, *, vars: dict[str, Any] | None = None, run_id: str | None = None,
               actor_id: str | None = None, session_id: str | None = None, parent_run_id: str | None = None,
               dispatch: bool = True) -> str:
        """Store a new run at the workflow's entry node and send its first tick."""
        from runtime.limits import RuntimeConfig

        workflow.get_node(workflow.entry_node)
        if run_id is not None:
            validate_run_id(run_id)
        run_vars = dict(vars or {})
        ensure_json(run_vars, "vars")
        if "_limits" not in run_vars:
            run_vars["_limits"] = RuntimeConfig().to_limits_dict()
        run = RunState.new(workflow_id=workflow.workflow_id, entry_node=workflow.entry_node, actor_id=actor_id,
                           session_id=session_id, vars=run_vars, parent_run_id=parent_run_id, run_id=run_id)
        v = self.backend.commit(run, [], create=True, dispatch=_TICK, lease_ms=self._tick_lease)
        if dispatch:
            self.dispatcher.tick(run.run_id, v, workflow=workflow.workflow_id, node=workflow.entry_node)
        return run.run_id

    def _retrying(self, run_id: str, change: Callable[[RunState, int], _Change | None]) -> RunState:
        """Load, change, commit; again on a version conflict. ``change`` returns None for no
        commit, else the changed run, ``"tick"`` or ``"none"`` (what to send), and optionally
        the ledger records the commit appends."""
        for _ in range(_CONFLICT_RETRIES):
            loaded = self.backend.load_for_driver(run_id)
            if loaded is None:
                raise RunNotFound(run_id)
            run, v = loaded[0], loaded[1]
            result = change(run, v)
            if result is None:
                return run
            try:
                change_run, what = result[0], result[1]
                records = list(result[2]) if len(result) > 2 else []  # type: ignore[misc]
                if what == "tick":
                    v = self._commit(change_run, records, v, dispatch=_TICK, lease_ms=self._tick_lease)
                    self.dispatcher.tick(run_id, v, workflow=change_run.workflow_id, node=change_run.current_node)
                else:
                    self._commit(change_run, records, v)
                return change_run
            except VersionConflict:
                time.sleep(0.001)
        raise VersionConflict(run_id=run_id, expected_version=-1, actual_version=None)

    def resume(self, run_id: str, *, wait_key: str | None, payload: Any, action: WaitAction = "resume") -> RunState:
        """Deliver ``payload`` to a run whose wait ``action`` may end, and send its tick.

        The wait decides (:func:`runtime.waits.check_wait_ends`): ``resume`` and ``emit`` need
        the run's own wait key, ``respond`` answers only a person's question, and a timer or a
        child run's wait is never ended this way (:class:`WaitNotEnded`, nothing written).
        """
        ensure_json(payload, "payload")

        def change(run: RunState, v: int) -> tuple[RunState, str]:
            w = check_wait_ends(run, action, wait_key)
            apply_resume(run, wait_key=w.wait_key, payload=payload)
            return run, "tick"

        return self._retrying(run_id, change)

    def emit(self, wait_key: str, payload: Any) -> list[str]:
        """Resume every run waiting on ``wait_key`` (found through the wait-key index)."""
        ensure_json(payload, "payload")
        resumed = []
        for rid in self.backend.runs.runs_waiting_on(wait_key):
            try:
                self.resume(rid, wait_key=wait_key, payload=payload, action="emit")
            except (RunNotWaiting, WaitKeyMismatch, WaitNotEnded, RunNotFound):
                continue  # it moved on between the index read and the resume, or waits on a child
            resumed.append(rid)
        return resumed

    def force_wake(self, run_id: str, *, reason: str, actor: str) -> RunState:
        """Wake a run sleeping until a time now, before its time: an operator's recorded decision.

        Writes one ``operator_wake`` record (who, why, the time it was due) in the hash chain
        and sends the tick. :class:`WaitNotEnded` when the run does not sleep on a timer.
        """
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("a forced wake needs a reason (what is it for?)")

        def change(run: RunState, v: int) -> _Change:
            w = check_wait_ends(run, "wake")
            record = StepRecord.start(run=run, node_id=run.current_node or "", effect=None)
            record.effect = {"type": "operator_wake", "payload": {"reason": reason.strip()}, "result_key": None}
            record.actor_id = actor
            record.finish_success({"woken": True, "until": w.until, "by": actor, "reason": reason.strip(),
                                   "at": _iso(self.backend.time_ms())})
            run.status = RunStatus.RUNNING
            run.waiting = None
            if w.resume_to_node:
                run.current_node = w.resume_to_node
            run.updated_at = record.ended_at or run.updated_at
            return run, "tick", [record]

        return self._retrying(run_id, change)

    def _cancel_one(self, run_id: str, reason: str | None) -> tuple[RunState, bool]:
        cancelled = False

        def change(run: RunState, v: int) -> tuple[RunState, str] | None:
            nonlocal cancelled
            cancelled = apply_cancel(run, reason)
            return (run, "none") if cancelled else None

        return self._retrying(run_id, change), cancelled

    def cancel(self, run_id: str, *, reason: str | None = None) -> list[RunState]:
        """Cancel a run and, transitively, its children (D6); returns the runs now cancelled."""
        out: list[RunState] = []
        queue, seen = [run_id], set()
        while queue:
            rid = queue.pop(0)
            if rid in seen:
                continue
            seen.add(rid)

            try:
                state, now_cancelled = self._cancel_one(rid, reason)
            except RunNotFound:
                if rid == run_id:
                    raise
                continue
            if now_cancelled:  # by this call (not a run that had ended before)
                out.append(state)
                if rid == run_id and state.parent_run_id:
                    self._notify_parent(state)  # a parent waiting on it fails (D6)
            queue.extend(sorted(i.decode() for i in self.backend.client.smembers(self.backend.keys.children(rid))))
        return out
