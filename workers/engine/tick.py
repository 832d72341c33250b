"""The tick task: load a run, run its current node through the kernel, commit, send what is next.

Also the wake of a run waiting until a time (a wake is a tick that first checks the time by
the Redis clock). A tick reads four files: the task in ``workers/app.py``, this module,
``stores/redis/backend.py`` (``load_for_driver``, ``commit``) and ``stores/redis/lua/commit.lua``.
"""

from __future__ import annotations

from runtime import EffectType, RunState, RunStatus, StepRecord, VersionConflict, WaitReason
from runtime._clock import epoch_ms
from runtime.execution import Execution, executing
from runtime.step import Action, PendingEffect, Transition, apply_outcome, start_attempt, step, wake_if_due
from runtime.waitset import is_wait_set
from stores.redis.admission import Verdict
from stores.redis.dispatch import Dispatch

from .. import logs, metrics, tracing
from ..flow.dispatch import start_holder
from ..flow.rules import FLOW_VARS
from .base import EFFECT_QUEUES, REFUSED, EngineBase, iso, logger

__all__ = ["Ticks"]


class Ticks(EngineBase):
    """``Engine.tick`` and ``Engine.wake``, and the landing of a transition both use."""

    def tick(self, run_id: str, version: int | None = None, attempt: int = 1, token: int | None = None) -> str:
        """Run the current node of a run (up to ``nodes_per_tick`` effect-free nodes).

        ``token`` is the fencing token the message was sent with: older than the run's, the
        lease was granted again since (the sweep sent another message) and this one is dropped.
        Returns what happened, for logs and tests: ``"missing"``, ``"stale"``, or the action.
        """
        loaded = self._load_for_step(run_id)
        if loaded is None:
            logger.warning("tick: run %s does not exist", run_id)
            return "missing"
        run, v, d, now_ms = loaded.run, loaded.version, loaded.dispatch, loaded.now_ms
        logs.note(run_id, workflow=run.workflow_id, node=run.current_node, version=v)
        if token is not None and token < loaded.token:
            return "stale"
        if d is not None and d.kind == "notify":
            self._notify_parent(run)
            return "notified"
        if run.status != RunStatus.RUNNING or d is None or d.kind != "tick" or (version is not None
                                                                                and version != v):
            return "stale"
        with tracing.run_span("abstractruntime.tick", run, version=v, lease_token=loaded.token, attempt=attempt):
            return self._advance(run, v, now_ms, attempt)

    def wake(self, run_id: str, version: int | None = None) -> str:
        """Wake a run waiting until a time, if that time has come by the Redis clock, and tick it."""
        loaded = self.backend.load_for_driver(run_id)
        if loaded is None:
            return "missing"
        run, v, now_ms = loaded.run, loaded.version, loaded.now_ms
        logs.note(run_id, workflow=run.workflow_id, node=run.current_node, version=v)
        w = run.waiting
        if run.status == RunStatus.WAITING and is_wait_set(w):  # named waits: their due timers
            with tracing.run_span("abstractruntime.wake", run, version=v):
                return self._wake_set(run, v, now_ms)
        # No version check: whether the run waits and is due is the whole question, and two
        # wakes of one run (countdown and sweep) race to one commit.
        if run.status != RunStatus.WAITING or w is None or w.reason != WaitReason.UNTIL or not w.until:
            return "stale"
        due_ms = epoch_ms(w.until)
        if due_ms > now_ms:  # early (a clock ahead of Redis's): never wake early, come back on time
            self.dispatcher.wake(run_id, v, countdown=(due_ms - now_ms) / 1000, workflow=run.workflow_id,
                                 node=run.current_node)
            return "early"
        metrics.timer_fired("until", now_ms - due_ms)
        with tracing.run_span("abstractruntime.wake", run, version=v, late_ms=now_ms - due_ms):
            wake_if_due(run, iso(now_ms))
            try:
                v = self._commit_tick(run, [], v, fenced=False)  # a wake holds no lease: this commit grants one
            except VersionConflict:
                return "stale"
            return self._advance(run, v, now_ms)

    def _advance(self, run: RunState, v: int, now_ms: int, attempt: int = 1) -> str:
        rid = run.run_id
        flow = run.vars.get(FLOW_VARS)
        if isinstance(flow, dict) and "start" in flow:
            self._started(run, flow)
        for n in range(self.settings.nodes_per_tick):
            node = run.current_node
            logs.note(rid, node=node)
            try:
                workflow = self._workflow(run.workflow_id)
                with executing(Execution(rid, node, self._token(rid) or 0)):
                    tr = step(run, workflow, ctx=self.registry.context, policy=self.registry.effect_policy)
            except Exception as exc:  # D5: the tick policy decides, then the run fails
                return self._node_failed(rid, v, node, exc, attempt)
            try:
                if tr.action is Action.NEXT:
                    v = self._commit_tick(run, [], v)
                    attempt = 1  # the next node's attempts are counted afresh
                    if n + 1 < self.settings.nodes_per_tick:
                        continue
                    self.dispatcher.tick(rid, v, workflow=run.workflow_id, node=run.current_node,
                                         token=self._token(rid))
                    return "next"
                if tr.action is Action.EXECUTE:
                    assert tr.pending is not None
                    return self._execute(run, v, tr.pending, now_ms)
                return self._land(run, v, tr, tr.records, now_ms)
            except VersionConflict:
                logger.debug("tick: run %s moved by another writer; this tick's work is dropped", rid)
                return "stale"
            except REFUSED as exc:  # what the node left cannot be stored: a node failure (D5)
                return self._node_failed(rid, v, node, exc, attempt)
        return "next"  # pragma: no cover - the loop always returns

    def _started(self, run: RunState, flow: dict[str, object]) -> None:
        """The first tick of a run whose start flow control admitted: the start's share is given
        back (the run's commit drops the mark; a tick run again gives back nothing more)."""
        run.vars[FLOW_VARS] = {k: val for k, val in flow.items() if k != "start"}
        try:
            rules = self.flow.resolver.applicable(self.flow.path_of(run), "run")  # given: one round trip
            if self.flow.admission.release_peek(start_holder(run.run_id), rules, peek=self.flow.keys.ready())[2]:
                self.fair.dispatch()
        except Exception as exc:  # the sweep reclaims it once its lease expires
            logger.warning("tick: run %s: could not give back its start's flow-control share: %s", run.run_id, exc)

    def _execute(self, run: RunState, v: int, pending: PendingEffect, now_ms: int) -> str:
        """An effect requested by a node: waits run here; LLM, tools and subworkflows go to their queue."""
        record = start_attempt(run, pending)
        kind = EFFECT_QUEUES.get(EffectType(pending.effect.type))
        if kind is None:
            started = StepRecord.from_dict(record.to_dict())
            outcome = self._run_effect(run, pending, self._handlers(now_ms))
            tr = apply_outcome(run, pending, outcome, record=record, policy=self.registry.effect_policy)
            return self._land(run, v, tr, [started, *tr.records], now_ms)
        # Flow control before the send: admitted, the dispatch says when (its task need not admit
        # it again); deferred, or behind work its key has queued, it is parked after the commit and
        # never enters the broker; refused, it is sent, and its task, refused again, fails it.
        gated = self.flow.admit(run, pending, lease_ms=self._effect_lease, in_turn=True)
        decision = gated[0] if gated is not None else None
        admitted_ms = decision.at_us // 1000 if decision is not None and decision.admitted else None
        inline = self._inline_hint(pending, kind, run.run_id)
        dispatch = Dispatch.effect(pending, queue=kind, started=record, admitted_ms=admitted_ms, inline=bool(inline))
        # (a conflict here leaves a share taken: it lapses with its lease, or the winning tick's
        # task, the same holder, holds it)
        v = self._commit(run, [record], v, dispatch=dispatch, lease_ms=self._effect_lease)
        if gated is not None and decision is not None and decision.verdict is Verdict.DEFERRED:
            self.fair.defer(run, v, decision, gated[1], now_ms, pending=pending, queue_kind=kind)
            return "deferred"
        self.dispatcher.effect(kind, run.run_id, v, pending.idempotency_key, pending.attempt,
                               workflow=run.workflow_id, node=run.current_node, token=self._token(run.run_id),
                               **inline)
        return "execute"

    def _land(self, run: RunState, v: int, tr: Transition, records: list[StepRecord], now_ms: int) -> str:
        """Commit a transition (an effect's outcome, a wait, an end) and send what comes next."""
        rid = run.run_id
        if tr.raise_after is not None:  # an effect completed in a plan going nowhere (D5)
            self._fail(run, records, str(tr.raise_after))
            self._commit_end(run, records, v)
            self._after_end(run)
            return "failed"
        if tr.action is Action.NEXT:
            v = self._commit_tick(run, records, v)
            self._tick_children()
            self.dispatcher.tick(rid, v, workflow=run.workflow_id, node=run.current_node, token=self._token(rid))
            return "next"
        if tr.action is Action.PARK:
            if is_wait_set(run.waiting):
                return self._park_set(run, v, records, now_ms)
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
            v = self._commit(run, records, v, dispatch=Dispatch.effect(tr.pending, queue=kind),
                             lease_ms=int(tr.retry_in_s * 1000) + self._effect_lease)
            self.dispatcher.effect(kind, rid, v, tr.pending.idempotency_key, tr.pending.attempt,
                                   countdown=tr.retry_in_s, workflow=run.workflow_id, node=run.current_node,
                                   token=self._token(rid))
            return "retry"
        self._commit_end(run, records, v)
        self._after_end(run)
        return "finish"

    def _node_failed(self, rid: str, v: int, node: str | None, exc: Exception, attempt: int) -> str:
        """A node handler raised: retry the tick with backoff, then fail the run with a record (D5)."""
        self._keep_failure(rid, exc, where="node", node=node, attempt=attempt)
        held = self._token(rid)
        if attempt < self.settings.tick_max_attempts:
            delay = self.settings.tick_backoff_s * (2 ** (attempt - 1))
            logger.warning("run %s: node %s raised %s (attempt %d of %d); retrying in %.1fs", rid, node,
                           type(exc).__name__, attempt, self.settings.tick_max_attempts, delay, exc_info=exc)
            if held is not None and not self.backend.renew_held_lease(rid, held, int(delay * 1000) + self._tick_lease):
                return "stale"  # the lease was granted to another: its holder runs the node again
            self.dispatcher.tick(rid, v, countdown=delay, attempt=attempt + 1, node=node, token=held)
            return "retry"
        loaded = self.backend.load_for_driver(rid)
        if loaded is None or loaded.version != v or (held is not None and loaded.token != held):
            return "stale"
        run = loaded.run
        record = StepRecord.start(run=run, node_id=node or "", effect=None)
        message = f"Node '{node}' raised {type(exc).__name__}: {exc}"
        self._fail(run, [record], message)
        logger.error("run %s failed: %s (attempt %d of %d)", rid, message, attempt, self.settings.tick_max_attempts,
                     exc_info=exc)
        try:
            self._commit_end(run, [record], v)
        except VersionConflict:
            return "stale"
        self._after_end(run)
        return "failed"
