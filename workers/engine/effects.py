"""Effect tasks: one attempt of a run's pending effect, on its own queue; and the effect
handlers the driver runs (the waits inside the tick, subworkflows, the registered ones)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from runtime import EffectType, RunState, RunStatus, StepRecord, VersionConflict, WaitReason, WaitState
from runtime._clock import epoch_ms
from runtime.errors import InvalidTimeError, StaleLease
from runtime.execution import Execution, executing
from runtime.models import EffectOutcome
from runtime.outbound import outbound_headers
from runtime.step import PendingEffect, apply_outcome, execute_effect, start_attempt
from stores.redis.admission import Decision, Verdict
from stores.redis.dispatch import Dispatch

from .. import logs, tracing
from ..flow.gate import llm_usage
from ..flow.rules import BudgetExceeded
from .base import REFUSED, EngineBase, logger

__all__ = ["Effects"]


def _open_waits_by(now_ms: int) -> Any:
    """OPEN_WAITS with its deadlines and reminders counted from ``now_ms`` (the Redis clock)."""
    from runtime.waitset import handle_open_waits

    def handle(run: RunState, effect: Any, default_next_node: str | None) -> EffectOutcome:
        return handle_open_waits(run, effect, default_next_node, lambda: now_ms)

    return handle


def _ask_user_by(now_ms: int) -> Any:
    """ASK_USER; with a ``waits`` list it opens a named set, by the Redis clock."""
    from runtime.effects import handle_ask_user

    open_waits = _open_waits_by(now_ms)

    def handle(run: RunState, effect: Any, default_next_node: str | None) -> EffectOutcome:
        if "waits" in effect.payload:
            return open_waits(run, effect, default_next_node)  # type: ignore[no-any-return]
        return handle_ask_user(run, effect, default_next_node)

    return handle


def _wait_until_by(now_ms: int) -> Any:
    """WAIT_UNTIL judged by the Redis clock (``now_ms``, read with the run), not this worker's:
    a worker whose clock runs ahead must not take a future time for a past one."""
    from runtime.effects import handle_wait_until

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


class Effects(EngineBase):
    """``Engine.effect`` and the handlers every effect runs through."""

    def effect(self, run_id: str, version: int | None, key: str, attempt: int, token: int | None = None) -> str:
        """Execute one attempt of a run's pending effect and commit its outcome.

        ``token``: the fencing token the message was sent with (older than the run's: dropped,
        as in :meth:`tick`). While the effect runs its lease is renewed, as long as this worker
        still holds it; its commit is refused if the lease was granted to another meanwhile.
        """
        loaded = self._load_for_step(run_id)
        if loaded is None:
            return "missing"
        run, v, d, now_ms = loaded.run, loaded.version, loaded.dispatch, loaded.now_ms
        logs.note(run_id, workflow=run.workflow_id, node=run.current_node, version=v)
        pending = d.pending if d is not None and d.kind == "effect" else None
        if (run.status != RunStatus.RUNNING or d is None or pending is None or pending.idempotency_key != key
                or pending.attempt != attempt or (version is not None and version != v)
                or (token is not None and token < loaded.token)):
            return "stale"  # cancelled, landed already, another attempt's message, or granted again
        held = loaded.token
        gated: tuple[Decision, list[Any]] | None
        if d.admitted_ms is not None and now_ms - d.admitted_ms < self._effect_lease // 3 and self.flow.active():
            # admitted by its tick a moment ago: its share outlives the first renewal (a third of a lease)
            gated = (Decision(Verdict.ADMITTED, again=True), self.flow.rules_for(run, pending))
        else:
            gated = self.flow.admit(run, pending, lease_ms=self._effect_lease)  # None: no rule counts it
        if gated is not None and gated[0].verdict is Verdict.DEFERRED:
            return self._defer(run, v, d, held, gated[0], gated[1], now_ms)
        refused = gated[0] if gated is not None and gated[0].verdict is Verdict.REFUSED else None
        if refused is not None and gated is not None:
            self.flow.note_refused(run_id, refused, gated[1])
        etype = getattr(pending.effect.type, "value", pending.effect.type)
        with tracing.run_span("abstractruntime.effect", run, effect=etype, attempt=attempt, version=v,
                              lease_token=held, idempotency_key=key) as span:
            result, value = self._attempt(run, v, d, pending, held, now_ms, refused,
                                          dict(gated[1]) if gated else {})
            if span is not None and etype == "llm_call" and isinstance(value, dict):
                tokens_in, tokens_out = llm_usage(value)  # GenAI semantic conventions
                span.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": tokens_in,
                                     "gen_ai.usage.output_tokens": tokens_out,
                                     "gen_ai.response.model": str(value.get("model") or "")})
        if gated is not None and result != "stale":
            try:
                if self.flow.settle(run, pending, value, gated[1]):
                    self.fair.dispatch()  # the share given back may admit deferred work
            except Exception as exc:  # the sweep reclaims the share once its lease expires
                logger.warning("effect: run %s: could not give back its flow-control share: %s", run_id, exc)
        return result

    def _attempt(self, run: RunState, v: int, d: Dispatch, pending: PendingEffect, held: int, now_ms: int,
                 refused: Decision | None, rules: dict[str, Any]) -> tuple[str, Any]:
        """Run an admitted attempt (or fail a refused one for good) and land its outcome; what
        happened and the effect's result."""
        run_id, key, attempt = run.run_id, pending.idempotency_key, pending.attempt
        record = d.started_record()
        if record is None:  # a retry: its `started` record goes in now, and is remembered in the dispatch
            record = start_attempt(run, pending)
            try:
                self.backend.append([StepRecord.from_dict(record.to_dict())], run_id=run.run_id,
                                    dispatch=d.with_started(record), fence=held)
            except VersionConflict:
                return "stale", None
        self._local.children = []
        started = record.to_dict()
        if refused is not None:
            rule = rules.get(refused.rule_id or "")
            why = {"oversize": "the estimate is larger than the whole budget",
                   "exhausted": f"{refused.kind} exhausted"}.get(refused.reason or "", refused.reason or "refused")
            outcome = EffectOutcome.failed(str(BudgetExceeded(rule.label if rule else str(refused.rule_id), why)),
                                           retryable=False)
        else:
            with self._renewing(run_id, held, pending), \
                    executing(Execution(run_id, pending.node_id, held, key, attempt)):
                token = outbound_headers.set(tracing.carrier() or None)  # an LLM request's traceparent
                try:
                    outcome = self._run_effect(run, pending, self._handlers())
                finally:
                    outbound_headers.reset(token)
            if outcome.status == "completed":
                self.flow.price(run, pending, outcome.result)
        tr = apply_outcome(run, pending, outcome, record=record, policy=self.registry.effect_policy)
        try:
            try:
                return self._land(run, v, tr, tr.records, now_ms), outcome.result
            except REFUSED as exc:
                # The result cannot be stored (too large, say): a failed attempt, on the run as
                # it was before this attempt.
                logger.warning("effect: run %s: the result of %s was refused: %s", run_id, key, exc)
                reloaded = self.backend.load_for_driver(run_id)
                if reloaded is None or reloaded.version != v or reloaded.token != held:
                    return "stale", None
                run = reloaded.run
                failed = EffectOutcome.failed(f"Effect result refused by the store: {exc}")
                tr = apply_outcome(run, pending, failed, record=StepRecord.from_dict(started),
                                   policy=self.registry.effect_policy)
                return self._land(run, v, tr, tr.records, now_ms), None
        except StaleLease as exc:
            logger.warning("effect: run %s: %s; the outcome of %s is dropped", run_id, exc, key)
            return "stale", None
        except VersionConflict:
            logger.info("effect: run %s moved while effect %s ran; its outcome is dropped", run_id, key)
            return "stale", None

    def _defer(self, run: RunState, v: int, d: Dispatch, held: int, decision: Decision, rules: list[Any],
               now_ms: int) -> str:
        """A rule deferred the attempt: it waits in its key's fair-dispatch queue, whose dispatcher
        admits it and sends its message again (``workers/flow/dispatch.py``); the run keeps its
        lease (the sweep renews it while the item is parked) and why (field ``a``, for ``explain``)."""
        assert d.pending is not None
        wait_ms = 0 if decision.until_ms is None else max(0, decision.until_ms - now_ms)
        if not self.backend.renew_held_lease(run.run_id, held, min(wait_ms, 60_000) + self._effect_lease):
            return "stale"
        self.fair.defer(run, v, decision, rules, now_ms, pending=d.pending, queue_kind=d.queue or "ticks")
        return "deferred"

    @contextmanager
    def _renewing(self, run_id: str, token: int, pending: PendingEffect | None = None) -> Iterator[None]:
        """Renew the lease of ``run_id`` every third of ``effect_lease_s`` while the block runs,
        as long as ``token`` is still the run's: a long effect keeps its lease without a lease
        as long as the slowest effect, and a dead worker's lease still expires."""
        done = threading.Event()
        period = max(self._effect_lease / 3000, 0.05)

        def renew() -> None:
            while not done.wait(period):
                try:
                    if not self.backend.renew_held_lease(run_id, token, self._effect_lease):
                        logger.warning("effect: run %s: lease granted to another (token %d is stale); "
                                       "this attempt's outcome will be refused", run_id, token)
                        return
                    if pending is not None and self.flow.active() \
                            and not self.flow.renew(run_id, pending, self._effect_lease):
                        logger.warning("effect: run %s: its flow-control share lapsed while it ran (its lease "
                                       "was not renewed in time); it no longer counts", run_id)
                except Exception as exc:  # Redis away for a moment: try again next period
                    logger.warning("effect: run %s: could not renew the lease: %s", run_id, exc)

        keeper = threading.Thread(target=renew, name=f"lease-{run_id[:8]}", daemon=True)
        keeper.start()
        try:
            yield
        finally:
            done.set()

    def _handlers(self, now_ms: int | None = None) -> dict[Any, Any]:
        """The effect handlers: the built-in waits (WAIT_UNTIL by the Redis clock when ``now_ms``
        is given), START_SUBWORKFLOW, then the registered ones."""
        from runtime.effects import builtin_wait_handlers

        handlers: dict[Any, Any] = dict(builtin_wait_handlers())
        if now_ms is not None:
            handlers[EffectType.WAIT_UNTIL] = _wait_until_by(now_ms)
            handlers[EffectType.OPEN_WAITS] = _open_waits_by(now_ms)
            handlers[EffectType.ASK_USER] = _ask_user_by(now_ms)
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
