"""Subworkflows: creating a child run for START_SUBWORKFLOW, ticking it, and telling its
parent when it ends (decision D6)."""

from __future__ import annotations

from typing import Any

from runtime import RunState, RunStatus, StepRecord, VersionConflict, WaitReason, WaitState
from runtime.errors import RunAlreadyExists
from runtime.models import EffectOutcome
from runtime.runtime import child_run_id
from runtime.step import apply_resume, current_effect_call

from ..flow.rules import FLOW_VARS, AdmissionKeys
from .base import EngineBase

__all__ = ["Subworkflows", "CONFLICT_RETRIES"]

#: Commits retried when an operation on another run (a parent, a producer's change) races another writer.
CONFLICT_RETRIES = 20


class Subworkflows(EngineBase):
    """Child runs: made by a parent's effect, ticked after the parent's commit, reported back."""

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
        child = loaded.run if loaded is not None else None
        if child is None:
            try:
                # A child is admitted under its parent's tenant, user and priority (its agent: its own
                # workflow). Its start is not admitted again: the parent's effect was.
                keys = AdmissionKeys.from_dict(run.vars.get(FLOW_VARS))
                self.create(child_wf, vars=payload.get("vars"), run_id=child_id, actor_id=run.actor_id,
                            session_id=run.session_id, parent_run_id=run.run_id, dispatch=False,
                            flow=AdmissionKeys(tenant=keys.tenant, user=keys.user, priority=keys.priority))
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
        """Send the first tick of the children this thread's effect made (its commit is in)."""
        children, self._local.children = self._local.__dict__.get("children", []), []
        for child_id in children:
            self.dispatcher.tick(child_id, None, token=self._token(child_id))

    def _after_end(self, run: RunState) -> None:
        """A run ended: its children made in this attempt are not ticked; its parent is told."""
        self._local.children = []
        if run.parent_run_id:
            self._notify_parent(run)

    def _notify_parent(self, child: RunState) -> None:
        """A child ended: resume its parent if it waits on it (with the output) or fail it."""
        parent_id = child.parent_run_id
        wait_key = f"subworkflow:{child.run_id}"
        for _ in range(CONFLICT_RETRIES):
            loaded = self.backend.load_for_driver(parent_id) if parent_id else None
            if loaded is None:
                break
            parent, pv = loaded.run, loaded.version
            w = parent.waiting
            if parent.status != RunStatus.WAITING or w is None or w.wait_key != wait_key:
                break  # an async child, or the parent moved on (cancelled, resumed)
            try:
                if child.status == RunStatus.COMPLETED:
                    apply_resume(parent, wait_key=wait_key, payload={"sub_run_id": child.run_id,
                                                                     "output": child.output})
                    pv = self._commit_tick(parent, [], pv, fenced=False)
                    self.dispatcher.tick(parent.run_id, pv, workflow=parent.workflow_id,
                                         node=parent.current_node, token=self._token(parent.run_id))
                else:
                    record = StepRecord.start(run=parent, node_id=parent.current_node or "", effect=None)
                    ended = "was cancelled" if child.status == RunStatus.CANCELLED else "failed"
                    self._fail(parent, [record], f"Subworkflow '{child.workflow_id}' {ended}: {child.error}")
                    parent.waiting = None
                    self._commit_end(parent, [record], pv, fenced=False)
                    if parent.parent_run_id:
                        self._notify_parent(parent)
                break
            except VersionConflict:
                continue
        else:
            return  # still racing: the child's lease brings this back through the sweep
        self.backend.clear_dispatch(child.run_id)
