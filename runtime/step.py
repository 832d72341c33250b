"""The kernel step: one node, or one effect outcome, turned into what to commit and what to do next.

Drivers (the in-process :class:`~runtime.runtime.Runtime`, the Celery tick task) load a
run, call these functions, commit what they return, then act on ``Transition.action``.
Nothing here touches a store or a queue, and the time decides nothing here: whether a timer
is due is decided by the ``now_iso`` the driver passes to ``wake_if_due``. A clock is read
only to stamp ``updated_at`` and a record's ``started_at`` / ``ended_at``: each function
that stamps takes ``clock``, by default the wall clock (:func:`runtime._clock.utc_now_iso`);
pass a fixed one for reproducible timestamps. (Node handlers may read the time through
their ``ctx``; that is theirs.)

* ``step`` runs the current node's handler and returns ``NEXT`` (run the next node),
  ``FINISH`` (the run completed), ``PARK`` (it waits) or ``EXECUTE`` (run ``pending``);
* ``start_attempt`` makes the ``started`` record of one attempt of a pending effect;
* ``execute_effect`` runs the effect handler (this is the part a remote worker does);
* ``apply_outcome`` folds the handler's outcome into the run: the result stored and the
  run moved on, the run parked, a ``RETRY`` after a backoff, or the run failed.

A driver must commit the records and the state of one transition together (or, for the
in-process driver, in the reference's order: records, then state; completion: state, then
record), so that a crash in between is recovered by the idempotency-key lookup.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ._clock import Clock, parse_iso, utc_now_iso
from ._json import ensure_json
from .answers import InvalidAnswer, check_answer
from .errors import InvalidPlanError, PayloadNotSerializable, RunNotWaiting, WaitKeyMismatch
from .models import Effect, EffectOutcome, EffectType, RunState, RunStatus, StepRecord, WaitReason
from .policies import DefaultEffectPolicy, EffectPolicy
from .spec import DefaultRunContext, WorkflowSpec
from .waitset import deliver, is_wait_set, target_of

__all__ = [
    "Action",
    "PendingEffect",
    "Transition",
    "EffectHandler",
    "current_effect_call",
    "step",
    "start_attempt",
    "execute_effect",
    "apply_outcome",
    "wake_if_due",
    "apply_resume",
    "apply_cancel",
    "set_nested",
    "scan_effect_result",
]

#: ``handler(run, effect, default_next_node) -> EffectOutcome`` (normalised by ``effects.adapt_handler``).
EffectHandler = Callable[[RunState, Effect, "str | None"], EffectOutcome]

_DEFAULT_POLICY = DefaultEffectPolicy()
_DEFAULT_CONTEXT = DefaultRunContext()


class Action(str, Enum):
    """What a driver does after committing a transition."""

    NEXT = "next"  # run the current node (in process: loop; Celery: enqueue a tick)
    EXECUTE = "execute"  # execute ``Transition.pending``
    RETRY = "retry"  # execute ``Transition.pending`` again after ``retry_in_s``
    PARK = "park"  # the run waits; nothing to do until a resume, an event or a timer
    FINISH = "finish"  # the run is terminal


@dataclass(slots=True)
class PendingEffect:
    """An effect a run has asked for and not yet landed: everything a remote executor needs.

    Treat it as immutable (``next_attempt`` makes a new one); it is not frozen only because
    frozen dataclasses are slow to build and one is built for every effect.
    """

    run_id: str
    node_id: str
    effect: Effect
    idempotency_key: str
    default_next_node: str | None
    attempt: int = 1
    max_attempts: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "node_id": self.node_id,
            "effect": self.effect.to_dict(),
            "idempotency_key": self.idempotency_key,
            "default_next_node": self.default_next_node,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PendingEffect:
        return cls(
            run_id=data["run_id"],
            node_id=data["node_id"],
            effect=Effect.from_dict(data["effect"]),
            idempotency_key=data["idempotency_key"],
            default_next_node=data.get("default_next_node"),
            attempt=int(data.get("attempt", 1)),
            max_attempts=int(data.get("max_attempts", 1)),
        )

    def next_attempt(self) -> PendingEffect:
        return PendingEffect(self.run_id, self.node_id, self.effect, self.idempotency_key,
                             self.default_next_node, self.attempt + 1, self.max_attempts)


@dataclass(slots=True)
class Transition:
    """The result of one kernel function: the new state, records to append, and what comes next."""

    state: RunState
    action: Action
    records: list[StepRecord] = field(default_factory=list)
    pending: PendingEffect | None = None
    retry_in_s: float = 0.0
    #: Set when the state did not change (a terminal or waiting run): commit nothing.
    noop: bool = False
    #: An error the driver raises after appending ``records`` (reference behaviour of an
    #: effect that completed in a plan with no ``next_node``); the state is not saved.
    raise_after: Exception | None = None


#: The pending effect being executed in this context, for handlers that need its key or
#: attempt (the built-in subworkflow handler derives the child's run id from them).
current_effect_call: contextvars.ContextVar[PendingEffect | None] = contextvars.ContextVar(
    "abstractruntime_current_effect_call", default=None
)


def _touch(run: RunState, now: str) -> None:
    run.updated_at = now


def _advance_effect_seq(run: RunState) -> None:
    rt = run.vars.get("_runtime")
    if not isinstance(rt, dict):
        rt = {}
        run.vars["_runtime"] = rt
    seq = rt.get("effect_seq", 0)
    rt["effect_seq"] = (seq if isinstance(seq, int) else 0) + 1


def step(
    run: RunState,
    workflow: WorkflowSpec,
    *,
    ctx: Any = None,
    policy: EffectPolicy | None = None,
    find_result: Callable[[str], Any] | None = None,
    clock: Clock = utc_now_iso,
) -> Transition:
    """Run the current node of a running run once. Takes ownership of ``run`` (it is changed).

    ``find_result(idempotency_key)`` returns an already-recorded result (or None); when it
    finds one the effect is not executed again and no record is written (reference rule).
    Node handler exceptions, an unknown node and an invalid plan propagate (decision D5).
    """
    if run.status != RunStatus.RUNNING:
        return Transition(state=run, action=Action.PARK if run.status == RunStatus.WAITING else Action.FINISH,
                          noop=True)
    handler = workflow.get_node(run.current_node)
    plan = handler(run, ctx if ctx is not None else _DEFAULT_CONTEXT)

    if plan.complete_output is not None:
        ensure_json(plan.complete_output, "complete_output")
        run.status = RunStatus.COMPLETED
        run.output = plan.complete_output
        record = StepRecord.start(run=run, node_id=plan.node_id, effect=None, started_at=clock())
        record.finish_success({"completed": True}, ended_at=record.started_at)
        _touch(run, record.started_at)
        return Transition(state=run, action=Action.FINISH, records=[record])

    if plan.effect is None:
        if not plan.next_node:
            raise InvalidPlanError(
                f"Node '{plan.node_id}' returned a plan with no effect, no next_node and no complete_output",
                node_id=plan.node_id,
            )
        run.current_node = plan.next_node
        _touch(run, clock())
        return Transition(state=run, action=Action.NEXT)

    pol = policy if policy is not None else _DEFAULT_POLICY
    effect = plan.effect
    key = pol.idempotency_key(run=run, node_id=plan.node_id, effect=effect)
    pending = PendingEffect(
        run_id=run.run_id,
        node_id=plan.node_id,
        effect=effect,
        idempotency_key=key,
        default_next_node=plan.next_node,
        attempt=1,
        max_attempts=pol.max_attempts(effect),
    )
    if find_result is not None:
        prior = find_result(key)
        if prior is not None:
            return apply_outcome(run, pending, EffectOutcome.completed(prior), record=None, policy=pol, clock=clock)
    return Transition(state=run, action=Action.EXECUTE, pending=pending)


def start_attempt(run: RunState, pending: PendingEffect, *, clock: Clock = utc_now_iso) -> StepRecord:
    """The ``started`` record of ``pending``'s current attempt (append it before executing)."""
    return StepRecord.start(
        run=run,
        node_id=pending.node_id,
        effect=pending.effect,
        attempt=pending.attempt,
        idempotency_key=pending.idempotency_key,
        started_at=clock(),
    )


def execute_effect(
    run: RunState, pending: PendingEffect, handlers: Mapping[Any, EffectHandler]
) -> EffectOutcome:
    """Run the handler of ``pending.effect``; an exception becomes a failed outcome."""
    etype = pending.effect.type
    handler = handlers.get(etype)
    if handler is None:
        name = etype.value if isinstance(etype, EffectType) else str(etype)
        return EffectOutcome.failed(f"No effect handler registered for {name}")
    token = current_effect_call.set(pending)
    try:
        outcome = handler(run, pending.effect, pending.default_next_node)
    except Exception as exc:  # an effect's failure is data: it becomes a failed attempt
        return EffectOutcome.failed(f"Effect handler raised exception: {exc}")
    finally:
        current_effect_call.reset(token)
    if not isinstance(outcome, EffectOutcome):
        return EffectOutcome.failed(
            f"Effect handler for {etype.value if isinstance(etype, EffectType) else etype} returned "
            f"{type(outcome).__name__}, expected EffectOutcome"
        )
    return outcome


def apply_outcome(
    run: RunState,
    pending: PendingEffect,
    outcome: EffectOutcome,
    *,
    record: StepRecord | None,
    policy: EffectPolicy | None = None,
    clock: Clock = utc_now_iso,
) -> Transition:
    """Fold an effect outcome into the run. ``record`` is the attempt's ``started`` record
    (finished in place and returned in ``records``), or None for a reused result (no records).

    Landing the effect (completed, waiting, or failed for good) advances ``effect_seq`` (D2).
    """
    pol = policy if policy is not None else _DEFAULT_POLICY
    now = clock()
    if outcome.status == "completed":
        try:  # a walk in Python, cheaper than encoding for the small results most effects return
            ensure_json(outcome.result, "effect result")
        except PayloadNotSerializable as exc:
            outcome = EffectOutcome.failed(str(exc))

    records = [record] if record is not None else []
    if outcome.status == "completed":
        if record is not None:
            record.finish_success(outcome.result, ended_at=now)
        result_key = pending.effect.result_key
        if result_key and outcome.result is not None:
            set_nested(run.vars, result_key, outcome.result)
        if not pending.default_next_node:
            err = InvalidPlanError(
                f"Node '{pending.node_id}' requested an effect that completed, but its plan has no next_node",
                node_id=pending.node_id,
            )
            return Transition(state=run, action=Action.FINISH, records=records, raise_after=err)
        run.current_node = pending.default_next_node
        _advance_effect_seq(run)
        _touch(run, now)
        return Transition(state=run, action=Action.NEXT, records=records)

    if outcome.status == "waiting" and outcome.wait is not None:
        if record is not None:
            record.finish_waiting(outcome.wait, ended_at=now)
        run.status = RunStatus.WAITING
        run.waiting = outcome.wait
        _advance_effect_seq(run)
        _touch(run, now)
        return Transition(state=run, action=Action.PARK, records=records)

    error = outcome.error or ("waiting outcome without a wait state" if outcome.status == "waiting"
                              else "unknown error")
    if record is not None:
        record.finish_failure(error, ended_at=now)
    if pending.attempt < pending.max_attempts and outcome.retryable:
        return Transition(
            state=run,
            action=Action.RETRY,
            records=records,
            pending=pending.next_attempt(),
            retry_in_s=max(0.0, float(pol.backoff_seconds(effect=pending.effect, attempt=pending.attempt))),
        )
    run.status = RunStatus.FAILED
    run.error = f"Effect failed after {pending.attempt} attempts: {error}"
    _advance_effect_seq(run)
    _touch(run, now)
    return Transition(state=run, action=Action.FINISH, records=records)


def wake_if_due(run: RunState, now_iso: str, *, clock: Clock = utc_now_iso) -> bool:
    """Resume a run waiting ``until`` a time at or before ``now_iso``; True if it woke.

    The wake stores nothing at ``result_key`` and writes no record (reference behaviour);
    the run moves to ``resume_to_node`` when one is set, else re-runs its node.
    """
    w = run.waiting
    if run.status != RunStatus.WAITING or w is None or w.reason != WaitReason.UNTIL or not w.until:
        return False
    if parse_iso(w.until) > parse_iso(now_iso, field="now"):
        return False
    run.status = RunStatus.RUNNING
    run.waiting = None
    if w.resume_to_node:
        run.current_node = w.resume_to_node
    _touch(run, clock())
    return True


def apply_resume(run: RunState, *, wait_key: str | None, payload: Any, clock: Clock = utc_now_iso) -> RunState:
    """Deliver ``payload`` to a waiting run and set it running again (no record is written).

    ``wait_key=None`` skips the key check, and so does a wait with no key. The payload goes
    to the wait's ``result_key`` when it has one; the run moves to ``resume_to_node`` when set.
    """
    if run.status != RunStatus.WAITING or run.waiting is None:
        raise RunNotWaiting(run_id=run.run_id, status=run.status)
    ensure_json(payload, "payload")
    w = run.waiting
    if is_wait_set(w):  # named waits: the one wait this delivery is for (AmbiguousWait if unclear)
        name = target_of(run, "resume", wait_key)
        deliver(run, name, payload, by=None, now_ms=int(parse_iso(clock(), field="now").timestamp() * 1000))
        return run
    if wait_key is not None and w.wait_key is not None and wait_key != w.wait_key:
        raise WaitKeyMismatch(run_id=run.run_id, expected=w.wait_key, got=wait_key)
    schema = (w.details or {}).get("schema") if w.reason == WaitReason.USER else None
    if isinstance(schema, dict):  # a typed question: the answer must match before anything changes
        try:
            check_answer(schema, payload)
        except InvalidAnswer as exc:
            raise InvalidAnswer(exc.path, exc.problem, run_id=run.run_id) from None
    if w.result_key:
        set_nested(run.vars, w.result_key, payload)
    if w.resume_to_node:
        run.current_node = w.resume_to_node
    run.status = RunStatus.RUNNING
    run.waiting = None
    _touch(run, clock())
    return run


def apply_cancel(run: RunState, reason: str | None = None, *, clock: Clock = utc_now_iso) -> bool:
    """Cancel a running or waiting run (True); terminal runs are left as they are (False)."""
    if run.status not in (RunStatus.RUNNING, RunStatus.WAITING):
        return False
    run.status = RunStatus.CANCELLED
    run.error = reason or "Cancelled"
    run.waiting = None
    _touch(run, clock())
    return True


def set_nested(target: dict[str, Any], dotted_key: str, value: Any) -> None:
    """``set_nested(v, "a.b.c", x)`` sets ``v["a"]["b"]["c"] = x``, replacing non-dicts on the way."""
    parts = dotted_key.split(".")
    cur = target
    for part in parts[:-1]:
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[part] = nxt
        cur = nxt
    cur[parts[-1]] = value


def scan_effect_result(records: Iterable[Mapping[str, Any]], idempotency_key: str) -> Any:
    """The reference's lookup: the first completed record with the key and a non-None result."""
    for rec in records:
        if rec.get("idempotency_key") == idempotency_key and rec.get("status") == "completed":
            if rec.get("result") is not None:
                return rec.get("result")
    return None
