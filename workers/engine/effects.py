"""Effect tasks: one attempt of a run's pending effect, on its own queue; and the effect
handlers the driver runs (the waits inside the tick, subworkflows, the registered ones)."""

from __future__ import annotations

from typing import Any

from runtime import EffectType, RunState, RunStatus, StepRecord, VersionConflict, WaitReason, WaitState
from runtime._clock import epoch_ms
from runtime.errors import InvalidTimeError
from runtime.models import EffectOutcome
from runtime.step import PendingEffect, apply_outcome, execute_effect, start_attempt

from .. import logs
from .base import REFUSED, EngineBase, logger

__all__ = ["Effects"]


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

    def effect(self, run_id: str, version: int | None, key: str, attempt: int) -> str:
        """Execute one attempt of a run's pending effect and commit its outcome."""
        loaded = self.backend.load_for_driver(run_id)
        if loaded is None:
            return "missing"
        run, v, d, now_ms, _lost = loaded
        logs.note(run_id, workflow=run.workflow_id, node=run.current_node, version=v)
        pending = d.pending if d is not None and d.kind == "effect" else None
        if (run.status != RunStatus.RUNNING or d is None or pending is None or pending.idempotency_key != key
                or pending.attempt != attempt or (version is not None and version != v)):
            return "stale"  # cancelled, landed already, or another attempt's message
        record = d.started_record()
        if record is None:  # a retry: its `started` record goes in now, and is remembered in the dispatch
            record = start_attempt(run, pending)
            try:
                self.backend.append([StepRecord.from_dict(record.to_dict())], run_id=run.run_id,
                                    dispatch=d.with_started(record))
            except VersionConflict:
                return "stale"
        self._local.children = []
        started = record.to_dict()
        outcome = self._run_effect(run, pending, self._handlers())
        tr = apply_outcome(run, pending, outcome, record=record, policy=self.registry.effect_policy)
        try:
            try:
                return self._land(run, v, tr, tr.records, now_ms)
            except REFUSED as exc:
                # The result cannot be stored (too large, say): a failed attempt, on the run as
                # it was before this attempt.
                logger.warning("effect: run %s: the result of %s was refused: %s", run_id, key, exc)
                reloaded = self.backend.load_for_driver(run_id)
                if reloaded is None or reloaded.version != v:
                    return "stale"
                run = reloaded.run
                failed = EffectOutcome.failed(f"Effect result refused by the store: {exc}")
                tr = apply_outcome(run, pending, failed, record=StepRecord.from_dict(started),
                                   policy=self.registry.effect_policy)
                return self._land(run, v, tr, tr.records, now_ms)
        except VersionConflict:
            logger.info("effect: run %s moved while effect %s ran; its outcome is dropped", run_id, key)
            return "stale"

    def _handlers(self, now_ms: int | None = None) -> dict[Any, Any]:
        """The effect handlers: the built-in waits (WAIT_UNTIL by the Redis clock when ``now_ms``
        is given), START_SUBWORKFLOW, then the registered ones."""
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
