"""Producer operations: what the client (and the CLI through it) does to runs: create,
resume, emit, wake by an operator, cancel. Each is a version-checked commit, retried on a
conflict, then the message the run now expects."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from runtime import RunState, RunStatus, StepRecord, VersionConflict
from runtime._clock import parse_iso
from runtime._json import ensure_json
from runtime.errors import RunNotFound, RunNotWaiting, WaitKeyMismatch, WaitNotEnded
from runtime.models import validate_run_id
from runtime.spec import WorkflowSpec
from runtime.step import apply_cancel, apply_resume
from runtime.waits import WaitAction, check_wait_ends
from runtime.waitset import UnknownWait, WaitClosed, deliver, delivery_record, is_wait_set, recorded, target_of
from stores.redis.admission import Decision, Verdict
from stores.redis.dispatch import Dispatch

from .. import tracing
from ..attrs import ATTRS_VARS, validate_attrs
from ..flow.dispatch import fairness_key, start_holder
from ..flow.resolve import Applicable
from ..flow.rules import FLOW_VARS, AdmissionKeys, BudgetExceeded
from .base import EngineBase, iso
from .children import CONFLICT_RETRIES

__all__ = ["ProducerOperations"]

#: The ledger record type of each kind of delivery.
_DELIVERY = {"respond": "wait_answer", "resume": "wait_resume", "emit": "wait_emit"}

#: What a change gives ``_retrying``: the run, what to send ("tick" or "none"), and optionally
#: the records to append in the same commit, and the named waits' events it adds.
_Change = (tuple[RunState, str] | tuple[RunState, str, list[StepRecord]]
           | tuple[RunState, str, list[StepRecord], list[dict[str, Any]]])


class ProducerOperations(EngineBase):
    """``Engine.create``, ``resume``, ``emit``, ``force_wake`` and ``cancel``."""

    def create(self, workflow: WorkflowSpec, *, vars: dict[str, Any] | None = None, run_id: str | None = None,
               actor_id: str | None = None, session_id: str | None = None, parent_run_id: str | None = None,
               dispatch: bool = True, flow: AdmissionKeys | None = None,
               attrs: Mapping[str, Any] | None = None) -> str:
        """Store a new run at the workflow's entry node and send its first tick.

        ``flow``: the keys the run is admitted under by flow control (``workers/flow``), kept in
        ``vars["_flow"]`` (none: the run is counted under ``global`` and its workflow id only).
        ``attrs``: the run's indexed attributes (``workers/attrs.py``), checked against
        ``settings.run_attrs`` before anything is stored (:class:`InvalidRunAttribute`), kept in
        ``vars["_attrs"]`` and added to their indexes just before the commit. Only this argument
        sets them: an ``_attrs`` in ``vars`` is dropped, so a child run given its parent's vars
        does not inherit the parent's attributes.
        """
        from runtime.limits import RuntimeConfig

        workflow.get_node(workflow.entry_node)
        if run_id is not None:
            validate_run_id(run_id)
        run_attrs = validate_attrs(attrs, self.settings.run_attrs) if attrs is not None else {}
        run_vars = dict(vars or {})
        run_vars.pop(ATTRS_VARS, None)
        ensure_json(run_vars, "vars")
        if run_attrs:
            run_vars[ATTRS_VARS] = run_attrs
        if "_limits" not in run_vars:
            run_vars["_limits"] = RuntimeConfig().to_limits_dict()
        if flow is not None and flow.to_dict():
            run_vars[FLOW_VARS] = flow.to_dict()
        run = RunState.new(workflow_id=workflow.workflow_id, entry_node=workflow.entry_node, actor_id=actor_id,
                           session_id=session_id, vars=run_vars, parent_run_id=parent_run_id, run_id=run_id)
        tracing.keep_start_context(run.vars, run.run_id, run.workflow_id)  # the run's trace (workers/tracing.py)
        admitted = self._admit_start(run) if dispatch else None
        try:
            if run_attrs:  # before the commit: an index may hold a run too many, never miss one
                created = parse_iso(run.created_at, field="created_at").timestamp() * 1000
                self.backend.put_attr_entries(run.run_id, run_attrs, round(created, 3))
            v = self.backend.commit(run, [], create=True, dispatch=Dispatch.tick(), lease_ms=self._tick_lease)
        except BaseException:
            if admitted is not None and admitted[0].admitted:
                self.flow.admission.release(start_holder(run.run_id), admitted[1])
            raise
        if admitted is not None and not admitted[0].admitted:
            decision, rules = admitted
            self.fair.defer(run, v, decision, rules, self.backend.time_ms())
        elif dispatch:
            self.dispatcher.tick(run.run_id, v, workflow=workflow.workflow_id, node=workflow.entry_node,
                                 token=self._token(run.run_id))
        return run.run_id

    def _admit_start(self, run: RunState) -> tuple[Decision, list[Applicable]] | None:
        """Flow control of a run's start (rules scoped ``*`` or ``run`` on its path): None when no
        rule counts it; else the decision, the start marked in ``vars["_flow"]`` (its first tick
        gives the share back). Deferred too when its key's fair-dispatch queue holds work (its
        turn comes by weighted round robin); :class:`BudgetExceeded` when a rule refuses (nothing
        stored)."""
        if not self.flow.active():
            return None
        path = self.flow.path_of(run)
        rules = self.flow.resolver.applicable(path, "run")
        if not rules:
            return None
        # behind its key's queued work, if any: a start does not overtake the ones that wait
        behind = self.flow.keys.deferred(fairness_key(path))
        decision = self.flow.admission.acquire(start_holder(run.run_id), rules, lease_ms=self._tick_lease,
                                               behind=behind)
        if decision.verdict is Verdict.REFUSED:
            rule = dict(rules).get(decision.rule_id or "")
            self.flow.note_refused(run.run_id, decision, rules)
            raise BudgetExceeded(rule.label if rule else str(decision.rule_id), f"{decision.kind} exhausted")
        flow = run.vars.get(FLOW_VARS)
        run.vars[FLOW_VARS] = {**(flow if isinstance(flow, dict) else {}), "start": 1}
        return decision, rules

    def refuse_start(self, run_id: str, version: int, decision: Decision, rules: list[Applicable]) -> None:
        """A parked start that a rule now refuses (its policy is ``fail``): the run fails with
        :class:`BudgetExceeded`."""
        rule = dict(rules).get(decision.rule_id or "")
        message = str(BudgetExceeded(rule.label if rule else str(decision.rule_id), f"{decision.kind} exhausted"))
        loaded = self.backend.load_for_driver(run_id)
        if loaded is None or loaded.version != version or loaded.run.status != RunStatus.RUNNING:
            return
        run = loaded.run
        self.flow.note_refused(run_id, decision, rules)
        records: list[StepRecord] = []
        self._fail(run, records, message)
        try:
            self._commit_end(run, records, version, fenced=False)
        except VersionConflict:
            return
        self._after_end(run)

    def _retrying(self, run_id: str, change: Callable[[RunState, int], _Change | None]) -> RunState:
        """Load, change, commit; again on a version conflict. ``change`` returns None for no
        commit, else the changed run, ``"tick"`` or ``"none"`` (what to send), and optionally
        the ledger records the commit appends."""
        for _ in range(CONFLICT_RETRIES):
            loaded = self.backend.load_for_driver(run_id)
            if loaded is None:
                raise RunNotFound(run_id)
            v = loaded.version
            indexed = self.backend.wait_entries(loaded.run)  # its open named waits, before the change
            result = change(loaded.run, v)
            if result is None:
                return loaded.run
            try:
                changed, what = result[0], result[1]
                records = list(result[2]) if len(result) > 2 else []  # type: ignore[misc]
                events = list(result[3]) if len(result) > 3 else []  # type: ignore[misc]
                now_indexed = self.backend.wait_entries(changed)
                self.backend.put_wait_entries(now_indexed - indexed)  # before: an index never misses a wait
                if what == "tick":
                    v = self._commit_tick(changed, records, v, fenced=False, events=events)
                    self.dispatcher.tick(run_id, v, workflow=changed.workflow_id, node=changed.current_node,
                                         token=self._token(run_id))
                else:
                    self._commit(changed, records, v, fenced=False, events=events)
                self.backend.drop_wait_entries(indexed - now_indexed)  # after: closed waits leave the indexes
                return changed
            except VersionConflict:
                time.sleep(0.001)
        raise VersionConflict(run_id=run_id, expected_version=-1, actual_version=None)

    def resume(self, run_id: str, *, wait_key: str | None, payload: Any, action: WaitAction = "resume",
               by: str | None = None) -> RunState:
        """Deliver ``payload`` to a run whose wait ``action`` may end, and send its tick.

        The wait decides (:func:`runtime.waits.check_wait_ends`): ``resume`` and ``emit`` need
        the run's own wait key, ``respond`` answers only a person's question, and a timer or a
        child run's wait is never ended this way (:class:`WaitNotEnded`, nothing written). On a
        named wait set it delivers to the one wait meant (:func:`runtime.waitset.target_of`:
        :class:`AmbiguousWait` for a ``respond`` with several questions open). The delivery is
        a ledger record (``wait_answer``, ``wait_resume``, ``wait_emit``) naming the wait,
        ``by`` and when, in the commit that resumes the run.
        """
        ensure_json(payload, "payload")
        return self._retrying(run_id, lambda run, v: self._delivered(run, action, wait_key, payload, by))

    def _delivered(self, run: RunState, action: WaitAction, wait_key: str | None, payload: Any,
                   by: str | None) -> _Change:
        """``payload`` delivered to the wait of ``run`` that ``action`` (with ``wait_key``) ends,
        with its delivery record: the change a resume, a respond and an emit commit."""
        kind = _DELIVERY[action]
        w = check_wait_ends(run, action, wait_key)
        now_ms = self.backend.time_ms()
        tracing.keep_caller_link(run.vars)
        if is_wait_set(w):
            d = deliver(run, target_of(run, action, wait_key), payload, by=by, now_ms=now_ms, kind=kind)
            return run, "tick" if d.resumed else "none", d.records, d.events
        node = run.current_node
        apply_resume(run, wait_key=w.wait_key, payload=payload)
        return run, "tick", [delivery_record(run, kind, w.wait_key, by=by, at_ms=now_ms, node=node,
                                             result={"answer": recorded(payload), "resumed": True})]

    def emit(self, wait_key: str, payload: Any, *, by: str | None = None) -> list[str]:
        """Resume every run waiting on ``wait_key`` (found through the wait-key index), and
        deliver to every named wait of that key (through the named waits' index)."""
        ensure_json(payload, "payload")
        resumed = []
        found = [*self.backend.runs_waiting_on(wait_key), *(rid for rid, _ in self.backend.waits_keyed_by(wait_key))]
        for rid in dict.fromkeys(found):
            try:
                self.resume(rid, wait_key=wait_key, payload=payload, action="emit", by=by)
            except (RunNotWaiting, WaitKeyMismatch, WaitNotEnded, RunNotFound, UnknownWait, WaitClosed):
                continue  # it moved on between the index read and the resume, or waits on a child
            resumed.append(rid)
        return resumed

    def _operator_record(self, run: RunState, action: str, reason: str | None, actor: str,
                         result: dict[str, Any]) -> StepRecord:
        """An operator's record (who, why, when) for the run's hash chain, signed by ``actor``."""
        record = StepRecord.start(run=run, node_id=run.current_node or "", effect=None)
        record.effect = {"type": action, "payload": {"reason": reason}, "result_key": None}
        record.actor_id = actor
        record.finish_success({**result, "by": actor, "reason": reason, "at": iso(self.backend.time_ms())})
        return record

    def force_wake(self, run_id: str, *, reason: str, actor: str) -> RunState:
        """Wake a run sleeping until a time now, before its time: an operator's recorded decision.

        Writes one ``operator_wake`` record (who, why, the time it was due) in the hash chain
        and sends the tick. :class:`WaitNotEnded` when the run does not sleep on a timer.
        """
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("a forced wake needs a reason (what is it for?)")

        def change(run: RunState, v: int) -> _Change:
            w = check_wait_ends(run, "wake")
            record = self._operator_record(run, "operator_wake", reason.strip(), actor,
                                           {"woken": True, "until": w.until})
            run.status = RunStatus.RUNNING
            run.waiting = None
            if w.resume_to_node:
                run.current_node = w.resume_to_node
            run.updated_at = record.ended_at or run.updated_at
            return run, "tick", [record]

        return self._retrying(run_id, change)

    def _cancel_one(self, run_id: str, reason: str | None, actor: str) -> tuple[RunState, bool]:
        cancelled = False

        def change(run: RunState, v: int) -> _Change | None:
            nonlocal cancelled
            cancelled = apply_cancel(run, reason)
            if not cancelled:
                return None
            # The operator's decision goes into the hash chain (who, why, when), signed by ``actor``.
            return run, "none", [self._operator_record(run, "operator_cancel", reason, actor, {"cancelled": True})]

        return self._retrying(run_id, change), cancelled

    def cancel(self, run_id: str, *, reason: str | None = None, actor: str = "unknown") -> list[RunState]:
        """Cancel a run and, transitively, its children (D6); returns the runs now cancelled.

        Each run cancelled gets an ``operator_cancel`` record naming ``actor`` and ``reason``.
        """
        out: list[RunState] = []
        queue, seen = [run_id], set()
        while queue:
            rid = queue.pop(0)
            if rid in seen:
                continue
            seen.add(rid)
            try:
                state, now_cancelled = self._cancel_one(rid, reason, actor)
            except RunNotFound:
                if rid == run_id:
                    raise
                continue
            if now_cancelled:  # by this call (not a run that had ended before)
                out.append(state)
                if rid == run_id and state.parent_run_id:
                    self._notify_parent(state)  # a parent waiting on it fails (D6)
            queue.extend(self.backend.children_of(rid))
        return out
