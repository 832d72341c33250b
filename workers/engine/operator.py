"""Operator actions that only the Celery driver has: retry a failed run (issue 13, item 5).

A retry sets a failed run running again at the node that failed (or one the operator names),
in one version-checked commit that also appends an ``operator_retry`` record (who, why, from
which node, the chain head it continues from) to the run's hash chain. Nothing before that
node runs again: the run continues from its stored state, and the failed effect gets a fresh
attempt series because landing its failure advanced ``effect_seq`` (D2).

A run that failed because the child it waited on failed is retried through that child: the
failed child (or its own failed child, down the chain) is retried, and each parent that failed
waiting on it is parked on it again, so it resumes when the child completes (decision D6 as
before).
"""

from __future__ import annotations

from runtime import RunState, RunStatus, WaitReason, WaitState
from runtime.errors import RunNotFailed, RunNotFound, UnknownNodeError

from .producer import ProducerOperations, _Change

__all__ = ["OperatorActions"]


def _child_of(w: WaitState) -> str:
    """The child run a subworkflow wait waits on ("" when none is named)."""
    return str((w.details or {}).get("sub_run_id") or "")


class OperatorActions(ProducerOperations):
    """``Engine.retry``."""

    def retry(self, run_id: str, *, reason: str, actor: str, from_node: str | None = None) -> RunState:
        """Set a failed run running again at its failed node (or ``from_node``); returns it.

        Raises :class:`RunNotFound`, :class:`RunNotFailed` (nothing written), and for a
        ``from_node`` the workflow does not have :class:`UnknownNodeError` (the workflow must be
        registered: :class:`WorkflowNotRegistered` otherwise).
        """
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("a retry needs a reason (what was fixed?)")
        reason = reason.strip()
        run = self._load_failed(run_id)
        if from_node is not None:
            spec = self._workflow(run.workflow_id)
            if from_node not in spec.nodes:
                raise UnknownNodeError(workflow_id=run.workflow_id, node_id=from_node)
            return self._retry_one(run_id, reason, actor, from_node)
        # Down to the run whose own node or effect failed, then park again each parent (up the
        # chain, also above ``run_id``) that failed because of the child below it.
        target = run
        while (child_id := self._failed_child(target)) is not None:
            target = self._load_failed(child_id)
        below, parents = target, []
        while below.parent_run_id:
            loaded = self.backend.load_for_driver(below.parent_run_id)
            w = self._failed_wait(loaded.run) if loaded is not None and loaded.run.status == RunStatus.FAILED \
                else None
            if loaded is None or w is None or _child_of(w) != below.run_id:
                break
            parents.append(loaded.run.run_id)
            below = loaded.run
        changed = {}
        for parent_id in reversed(parents):  # the top first: no child ends before its parent waits
            changed[parent_id] = self._repark(parent_id, reason, actor)
        changed[target.run_id] = self._retry_one(target.run_id, reason, actor, None)
        return changed.get(run_id) or self._load(run_id)  # as committed, before any worker moves it

    def _load(self, run_id: str) -> RunState:
        loaded = self.backend.load_for_driver(run_id)
        if loaded is None:
            raise RunNotFound(run_id)
        return loaded.run

    def _load_failed(self, run_id: str) -> RunState:
        run = self._load(run_id)
        if run.status != RunStatus.FAILED:
            raise RunNotFailed(run_id=run_id, status=run.status)
        return run

    def _failed_wait(self, run: RunState) -> WaitState | None:
        """The child wait a run had when it failed because that child ended badly, else None.

        Such a run's ledger ends with the failure record that ``_notify_parent`` wrote, right
        after the ``waiting`` record of its START_SUBWORKFLOW effect.
        """
        records = self.backend.ledger.list(run.run_id)
        if len(records) < 2 or records[-1].get("status") != "failed" or records[-2].get("status") != "waiting":
            return None
        result = records[-2].get("result")
        wait = result.get("wait") if isinstance(result, dict) else None
        if not isinstance(wait, dict):
            return None
        w = WaitState.from_dict(wait)
        return w if w.reason == WaitReason.SUBWORKFLOW and _child_of(w) else None

    def _failed_child(self, run: RunState) -> str | None:
        """The child whose failure failed ``run``, when that child is still failed (retryable)."""
        w = self._failed_wait(run)
        if w is None:
            return None
        child = self.backend.load_for_driver(_child_of(w))
        return child.run.run_id if child is not None and child.run.status == RunStatus.FAILED else None

    def _retry_one(self, run_id: str, reason: str, actor: str, from_node: str | None) -> RunState:
        def change(run: RunState, v: int) -> _Change:
            if run.status != RunStatus.FAILED:
                raise RunNotFailed(run_id=run_id, status=run.status)
            node = from_node or run.current_node or ""
            record = self._operator_record(run, "operator_retry", reason, actor, {
                "retried": True, "from_node": node, "failed_at_node": run.current_node, "error": run.error,
                "continues_from": self.backend.ledger.chain_head(run_id)})
            run.status = RunStatus.RUNNING
            run.error = None
            run.waiting = None
            run.current_node = node
            run.updated_at = record.ended_at or run.updated_at
            return run, "tick", [record]

        return self._retrying(run_id, change)

    def _repark(self, run_id: str, reason: str, actor: str) -> RunState:
        """Park a parent that failed because of its child on that child again (no message)."""
        def change(run: RunState, v: int) -> _Change:
            w = self._failed_wait(run) if run.status == RunStatus.FAILED else None
            if w is None:
                raise RunNotFailed(run_id=run_id, status=run.status)
            record = self._operator_record(run, "operator_retry", reason, actor, {
                "retried": True, "from_node": run.current_node, "waits_again_on": _child_of(w),
                "error": run.error, "continues_from": self.backend.ledger.chain_head(run_id)})
            run.status = RunStatus.WAITING
            run.error = None
            run.waiting = w
            run.updated_at = record.ended_at or run.updated_at
            return run, "none", [record]

        return self._retrying(run_id, change)
