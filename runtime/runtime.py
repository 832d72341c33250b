"""The in-process driver: start, tick, resume and cancel runs, executing effects inline.

It keeps the reference's public API and ledger order; every decision it takes comes from
the kernel step (``step.py``), which the Celery driver shares.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from ._clock import utc_now_iso
from ._json import ensure_json
from .effects import adapt_handler, builtin_wait_handlers
from .errors import RunAlreadyExists, RunNotFound
from .limits import LIMIT_KEYS, LimitWarning, RuntimeConfig, limit_status, limit_warnings
from .models import Effect, EffectOutcome, EffectType, RunState, RunStatus, WaitReason, WaitState, validate_run_id
from .policies import DefaultEffectPolicy, EffectPolicy
from .spec import DefaultRunContext, WorkflowSpec
from .step import (
    Action,
    EffectHandler,
    PendingEffect,
    Transition,
    apply_cancel,
    apply_outcome,
    apply_resume,
    current_effect_call,
    execute_effect,
    scan_effect_result,
    start_attempt,
    step,
    wake_if_due,
)

__all__ = ["Runtime", "child_run_id"]

logger = logging.getLogger(__name__)

#: Namespace of the uuid5 ids given to child runs (derived from the parent's effect key).
_CHILD_NAMESPACE = uuid.UUID("6f1d7f4e-6a43-4c39-9a8e-0f6bb3c1d2a5")


def child_run_id(parent_run_id: str, idempotency_key: str, attempt: int) -> str:
    """The run id of the child a START_SUBWORKFLOW attempt creates.

    Derived, not random, so that executing the same attempt again (a crash, a redelivered
    task) finds the child it made instead of starting a second one.
    """
    return str(uuid.uuid5(_CHILD_NAMESPACE, f"{parent_run_id}/{idempotency_key}/{attempt}"))


class Runtime:
    """Runs workflows in this process against a run store and a ledger store."""

    def __init__(
        self,
        *,
        run_store: Any,
        ledger_store: Any,
        effect_handlers: Mapping[Any, Callable[..., EffectOutcome]] | None = None,
        context: Any = None,
        workflow_registry: Any = None,
        artifact_store: Any = None,
        effect_policy: EffectPolicy | None = None,
        config: RuntimeConfig | None = None,
    ) -> None:
        self._run_store = run_store
        self._ledger_store = ledger_store
        self._context = context if context is not None else DefaultRunContext()
        self._workflow_registry = workflow_registry
        self._artifact_store = artifact_store
        self._effect_policy: EffectPolicy = effect_policy if effect_policy is not None else DefaultEffectPolicy()
        self._config = config if config is not None else RuntimeConfig()
        handlers: dict[Any, EffectHandler] = dict(builtin_wait_handlers())
        handlers[EffectType.START_SUBWORKFLOW] = self._handle_start_subworkflow
        # User handlers come last, so they override the built-ins (reference behaviour).
        for etype, handler in (effect_handlers or {}).items():
            handlers[EffectType(etype)] = adapt_handler(handler)
        self._handlers = handlers
        find = getattr(ledger_store, "find_effect_result", None)
        self._find_in_index: Callable[[str, str], Any] | None = find
        # A ledger that looks a result up and appends the `started` record in one call
        # (Redis: one round trip instead of two per effect step).
        self._begin: Callable[[Any], Any] | None = getattr(ledger_store, "begin_effect", None)
        # A run store that commits state and records together (Redis) and owns this ledger.
        commit = getattr(run_store, "commit", None)
        self._atomic: Callable[[RunState, list[Any]], None] | None = (
            commit if commit is not None and getattr(run_store, "ledger", None) is ledger_store else None
        )

    # -- properties (reference API) ------------------------------------------------------------

    @property
    def run_store(self) -> Any:
        return self._run_store

    @property
    def ledger_store(self) -> Any:
        return self._ledger_store

    @property
    def workflow_registry(self) -> Any:
        return self._workflow_registry

    @property
    def artifact_store(self) -> Any:
        return self._artifact_store

    @property
    def effect_policy(self) -> EffectPolicy:
        return self._effect_policy

    @property
    def config(self) -> RuntimeConfig:
        return self._config

    @property
    def effect_handlers(self) -> Mapping[Any, EffectHandler]:
        return dict(self._handlers)

    def set_workflow_registry(self, registry: Any) -> None:
        self._workflow_registry = registry

    def set_artifact_store(self, store: Any) -> None:
        self._artifact_store = store

    def set_effect_policy(self, policy: EffectPolicy) -> None:
        self._effect_policy = policy

    # -- runs ----------------------------------------------------------------------------------

    def start(
        self,
        *,
        workflow: WorkflowSpec,
        vars: dict[str, Any] | None = None,
        actor_id: str | None = None,
        session_id: str | None = None,
        parent_run_id: str | None = None,
        run_id: str | None = None,
    ) -> str:
        """Create a run at the workflow's entry node and return its id (nothing is executed).

        ``run_id`` picks the id; it must be free (:class:`RunAlreadyExists` otherwise, D7).
        """
        workflow.get_node(workflow.entry_node)  # an unknown entry node fails here, not later
        if run_id is not None:
            validate_run_id(run_id)
        run_vars = dict(vars or {})
        ensure_json(run_vars, "vars")
        if "_limits" not in run_vars:
            run_vars["_limits"] = self._config.to_limits_dict()
        run = RunState.new(
            workflow_id=workflow.workflow_id,
            entry_node=workflow.entry_node,
            actor_id=actor_id,
            session_id=session_id,
            vars=run_vars,
            parent_run_id=parent_run_id,
            run_id=run_id,
        )
        # create() for fresh ids too: the store need not look for a state to replace.
        create = getattr(self._run_store, "create", None)
        if create is not None:
            create(run)
        else:  # a reference-style store: check, then save (not atomic across processes)
            if run_id is not None and self._run_store.load(run_id) is not None:
                raise RunAlreadyExists(run_id)
            self._run_store.save(run)
        logger.debug("run %s started (workflow %s)", run.run_id, workflow.workflow_id)
        return run.run_id

    def get_state(self, run_id: str) -> RunState:
        run = self._run_store.load(run_id)
        if run is None:
            raise RunNotFound(run_id)
        return run  # type: ignore[no-any-return]

    def get_ledger(self, run_id: str) -> list[dict[str, Any]]:
        return self._ledger_store.list(run_id)  # type: ignore[no-any-return]

    def tick(self, *, workflow: WorkflowSpec, run_id: str, max_steps: int = 100) -> RunState:
        """Advance the run up to ``max_steps`` steps, until it waits or ends; return its state.

        Terminal runs (cancelled included, D1) come back unchanged; a waiting run comes
        back unless it waits ``until`` a time now passed. Node handler errors are raised to
        the caller and leave the run as last saved (D5).
        """
        run = self.get_state(run_id)
        if run.status.is_terminal:
            return run
        if run.status == RunStatus.WAITING and not wake_if_due(run, utc_now_iso()):
            return run
        find_result = None if self._begin is not None else self._finder(run_id)
        for _ in range(max_steps):
            tr = step(run, workflow, ctx=self._context, policy=self._effect_policy, find_result=find_result)
            if tr.action is Action.EXECUTE:
                assert tr.pending is not None
                tr = self._execute(run, tr.pending)
            elif tr.action is Action.FINISH and tr.records:
                # Completion: the state is saved first, then its single record (reference order).
                if self._atomic is not None:
                    self._atomic(tr.state, tr.records)
                else:
                    self._run_store.save(tr.state)
                    for record in tr.records:
                        self._ledger_store.append(record)
                logger.info("run %s completed at node %s", run_id, tr.records[-1].node_id)
                return tr.state
            self._commit(tr)
            run = tr.state
            if run.status != RunStatus.RUNNING:
                break
        return run

    def _finder(self, run_id: str) -> Callable[[str], Any]:
        find = self._find_in_index
        if find is not None:
            return lambda key: find(run_id, key)
        return lambda key: scan_effect_result(self._ledger_store.list(run_id), key)

    def _execute(self, run: RunState, pending: PendingEffect) -> Transition:
        """Execute an effect inline, attempt after attempt, appending each attempt's records."""
        while True:
            record = start_attempt(run, pending)
            if self._begin is not None and pending.attempt == 1:
                prior = self._begin(record)
                if prior is not None:  # recorded before a crash: reuse it, write nothing
                    return apply_outcome(run, pending, EffectOutcome.completed(prior), record=None,
                                         policy=self._effect_policy)
            else:
                self._ledger_store.append(record)
            outcome = execute_effect(run, pending, self._handlers)
            tr = apply_outcome(run, pending, outcome, record=record, policy=self._effect_policy)
            if tr.action is not Action.RETRY:
                return tr
            self._ledger_store.append(record)
            logger.info("run %s: %s attempt %d failed, retrying in %.2fs", run.run_id,
                        getattr(pending.effect.type, "value", pending.effect.type), pending.attempt, tr.retry_in_s)
            if tr.retry_in_s > 0:
                time.sleep(tr.retry_in_s)  # looked up at call time, so tests can patch time.sleep
            assert tr.pending is not None
            pending = tr.pending

    def _commit(self, tr: Transition) -> None:
        """Append the transition's records, then save its state (the reference's order);
        one atomic commit of both when the stores can (Redis)."""
        if tr.noop:
            return
        if self._atomic is not None and tr.raise_after is None:
            self._atomic(tr.state, tr.records)
            return
        for record in tr.records:
            self._ledger_store.append(record)
        if tr.raise_after is not None:
            raise tr.raise_after
        self._run_store.save(tr.state)

    def resume(self, *, workflow: WorkflowSpec, run_id: str, wait_key: str | None, payload: Any) -> RunState:
        """Deliver ``payload`` to a waiting run, then tick it (``max_steps`` 100)."""
        run = self.get_state(run_id)
        apply_resume(run, wait_key=wait_key, payload=payload)
        self._run_store.save(run)
        return self.tick(workflow=workflow, run_id=run_id)

    def cancel_run(self, run_id: str, *, reason: str | None = None) -> RunState:
        """Cancel a running or waiting run; a terminal run comes back unchanged."""
        run = self.get_state(run_id)
        if apply_cancel(run, reason):
            self._run_store.save(run)
            logger.info("run %s cancelled", run_id)
        return run

    # -- limits --------------------------------------------------------------------------------

    def get_limit_status(self, run_id: str) -> dict[str, Any]:
        """Iterations, tokens and history of the run against their maxima."""
        return limit_status(self.get_state(run_id).vars)

    def check_limits(self, run: RunState) -> list[LimitWarning]:
        """The limits of ``run`` that are near or over their maxima."""
        return limit_warnings(run.vars)

    def update_limits(self, run_id: str, updates: Mapping[str, Any]) -> None:
        """Change limits of a run; keys other than the eight limit keys are ignored."""
        run = self.get_state(run_id)
        limits = run.vars.get("_limits")
        if not isinstance(limits, dict):
            limits = self._config.to_limits_dict()
            run.vars["_limits"] = limits
        for key in LIMIT_KEYS:
            if key in updates:
                limits[key] = updates[key]
        ensure_json(limits, "limits")
        run.updated_at = utc_now_iso()
        self._run_store.save(run)

    # -- subworkflows --------------------------------------------------------------------------

    def _handle_start_subworkflow(
        self, run: RunState, effect: Effect, default_next_node: str | None
    ) -> EffectOutcome:
        """Start a child run; a sync child is ticked here, an async one is left for the host (D6)."""
        payload = effect.payload
        workflow_id = payload.get("workflow_id")
        if not workflow_id:
            return EffectOutcome.failed("start_subworkflow requires payload.workflow_id")
        registry = self._workflow_registry
        if registry is None:
            return EffectOutcome.failed(
                "start_subworkflow requires a workflow_registry. Pass workflow_registry= to Runtime "
                "or call set_workflow_registry()."
            )
        child_wf = registry.get(workflow_id)
        if child_wf is None:
            return EffectOutcome.failed(f"Workflow '{workflow_id}' not found in registry")
        call = current_effect_call.get()
        child_id = child_run_id(run.run_id, call.idempotency_key, call.attempt) if call else str(uuid.uuid4())
        if self._run_store.load(child_id) is None:
            self.start(
                workflow=child_wf,
                vars=payload.get("vars"),
                actor_id=run.actor_id,
                session_id=run.session_id,
                parent_run_id=run.run_id,
                run_id=child_id,
            )
        if payload.get("async"):
            return EffectOutcome.completed({"sub_run_id": child_id, "async": True})
        try:
            child = self.tick(workflow=child_wf, run_id=child_id)
        except Exception as exc:
            return EffectOutcome.failed(f"Subworkflow '{workflow_id}' failed: {exc}")
        if child.status == RunStatus.COMPLETED:
            return EffectOutcome.completed({"sub_run_id": child_id, "output": child.output})
        if child.status == RunStatus.FAILED:
            return EffectOutcome.failed(f"Subworkflow '{workflow_id}' failed: {child.error}")
        if child.status == RunStatus.WAITING and child.waiting is not None:
            return EffectOutcome.waiting(
                WaitState(
                    reason=WaitReason.SUBWORKFLOW,
                    wait_key=f"subworkflow:{child_id}",
                    resume_to_node=payload.get("resume_to_node") or default_next_node,
                    result_key=effect.result_key,
                    details={
                        "sub_run_id": child_id,
                        "sub_workflow_id": workflow_id,
                        "sub_waiting": {
                            "reason": WaitReason(child.waiting.reason).value,
                            "wait_key": child.waiting.wait_key,
                        },
                    },
                )
            )
        return EffectOutcome.failed(f"Unexpected subworkflow status: {RunStatus(child.status).value}")
