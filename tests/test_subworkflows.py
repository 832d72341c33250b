"""START_SUBWORKFLOW in process: sync, async and waiting children, and their failures."""

from __future__ import annotations

import pytest

from runtime import (
    Effect,
    EffectOutcome,
    EffectType,
    RunStatus,
    Scheduler,
    StepPlan,
    WaitReason,
    WorkflowRegistry,
    WorkflowSpec,
)
from runtime.runtime import child_run_id
from runtime.step import Action, apply_outcome, execute_effect, start_attempt, step

from support.scenarios import ask, chain, one_effect


def parent(payload: dict, *, workflow_id: str = "parent") -> WorkflowSpec:
    return one_effect(Effect(type=EffectType.START_SUBWORKFLOW, payload=payload, result_key="sub"),
                      workflow_id=workflow_id)


def failing_child() -> WorkflowSpec:
    return one_effect(Effect(type=EffectType.WAIT_EVENT, payload={}), workflow_id="failing")


@pytest.fixture
def registry():
    reg = WorkflowRegistry()
    for wf in (chain(3, "child"), ask("Child question?", workflow_id="asking"), failing_child()):
        reg.register(wf)
    return reg


def test_sync_child_runs_and_its_output_reaches_the_parent(make_runtime, registry):
    rt = make_runtime(workflow_registry=registry)
    wf = parent({"workflow_id": "child", "vars": {"seed": 1}})
    run_id = rt.start(workflow=wf, actor_id="alice", session_id="s9")
    state = rt.tick(workflow=wf, run_id=run_id)
    assert state.status == RunStatus.COMPLETED
    sub = state.output["sub"]
    assert sub["output"] == {"visited": 3}
    child = rt.get_state(sub["sub_run_id"])
    assert child.parent_run_id == run_id and (child.actor_id, child.session_id) == ("alice", "s9")
    assert child.vars["seed"] == 1 and "_limits" in child.vars


def test_child_failure_fails_the_parent_effect(make_runtime, registry):
    rt = make_runtime(workflow_registry=registry)
    wf = parent({"workflow_id": "failing"})
    state = rt.tick(workflow=wf, run_id=rt.start(workflow=wf))
    assert state.status == RunStatus.FAILED
    assert state.error == ("Effect failed after 1 attempts: Subworkflow 'failing' failed: "
                           "Effect failed after 1 attempts: wait_event requires payload.wait_key")


@pytest.mark.parametrize(
    "payload, registered, message",
    [
        ({}, True, "start_subworkflow requires payload.workflow_id"),
        ({"workflow_id": "child"}, False, "start_subworkflow requires a workflow_registry."),
        ({"workflow_id": "nope"}, True, "Workflow 'nope' not found in registry"),
    ],
)
def test_subworkflow_misconfiguration_fails_clearly(make_runtime, registry, payload, registered, message):
    rt = make_runtime(workflow_registry=registry if registered else None)
    wf = parent(payload)
    state = rt.tick(workflow=wf, run_id=rt.start(workflow=wf))
    assert state.status == RunStatus.FAILED and message in state.error


def test_waiting_child_parks_the_parent_until_the_host_resumes_it(make_runtime, registry):
    """Decision D6 (in-process half): the host resumes the parent with resume_subworkflow_parent."""
    rt = make_runtime(workflow_registry=registry)
    scheduler = Scheduler(runtime=rt, registry=registry)
    wf = parent({"workflow_id": "asking"})
    registry.register(wf)
    run_id = rt.start(workflow=wf)
    state = rt.tick(workflow=wf, run_id=run_id)
    assert state.status == RunStatus.WAITING
    w = state.waiting
    child_id = w.details["sub_run_id"]
    assert w.reason == WaitReason.SUBWORKFLOW and w.wait_key == f"subworkflow:{child_id}"
    assert w.details == {"sub_run_id": child_id, "sub_workflow_id": "asking",
                         "sub_waiting": {"reason": "user", "wait_key": f"user:{child_id}:act"}}
    assert w.resume_to_node == "done" and w.result_key == "sub"

    child = scheduler.resume_event(run_id=child_id, wait_key=f"user:{child_id}:act", payload="yes")
    assert child.status == RunStatus.COMPLETED
    assert rt.get_state(run_id).status == RunStatus.WAITING, "0.2.0 never resumes the parent by itself"
    resumed = scheduler.resume_subworkflow_parent(child_run_id=child_id, child_output=child.output)
    assert resumed.status == RunStatus.COMPLETED
    assert resumed.output == {"sub": {"sub_run_id": child_id, "output": {"answer": "yes"}}}
    assert scheduler.resume_subworkflow_parent(child_run_id=child_id, child_output={}) is None


def test_async_child_is_created_but_not_ticked(make_runtime, registry):
    """Decision D6: in process, async children are left for the host to drive."""
    rt = make_runtime(workflow_registry=registry)
    wf = parent({"workflow_id": "child", "async": True})
    run_id = rt.start(workflow=wf)
    state = rt.tick(workflow=wf, run_id=run_id)
    assert state.status == RunStatus.COMPLETED
    child_id = state.output["sub"]["sub_run_id"]
    assert state.output["sub"] == {"sub_run_id": child_id, "async": True}
    child = rt.get_state(child_id)
    assert child.status == RunStatus.RUNNING and child.current_node == "n0"
    assert rt.tick(workflow=registry.get("child"), run_id=child_id).status == RunStatus.COMPLETED


def test_a_re_executed_start_finds_its_child_instead_of_making_a_second(make_runtime, registry, backend):
    """The child id derives from the parent's effect key: a crash before the parent's commit
    followed by a retry must not start the child twice."""
    rt = make_runtime(workflow_registry=registry)
    wf = parent({"workflow_id": "asking"})
    run_id = rt.start(workflow=wf)
    run = rt.get_state(run_id)
    tr = step(run, wf)
    assert tr.action == Action.EXECUTE
    outcome = execute_effect(run, tr.pending, rt.effect_handlers)  # child created and ticked; then a crash
    child_id = outcome.wait.details["sub_run_id"]
    assert child_id == child_run_id(run_id, tr.pending.idempotency_key, 1)

    state = rt.tick(workflow=wf, run_id=run_id)
    assert state.waiting.details["sub_run_id"] == child_id
    assert [c.run_id for c in backend.run_store.list_children(parent_run_id=run_id)] == [child_id]
    assert [r["status"] for r in rt.get_ledger(child_id)] == ["started", "waiting"], "child not re-run"
    rec = start_attempt(run, tr.pending)
    assert apply_outcome(run, tr.pending, EffectOutcome.completed({}), record=rec).action == Action.NEXT


def test_child_tick_error_becomes_the_parent_effect_failure(make_runtime, registry):
    def broken(run, ctx):
        raise ValueError("bad child node")

    registry.register(WorkflowSpec(workflow_id="broken", entry_node="a", nodes={"a": broken}))
    rt = make_runtime(workflow_registry=registry)
    wf = parent({"workflow_id": "broken"})
    state = rt.tick(workflow=wf, run_id=rt.start(workflow=wf))
    assert state.error == "Effect failed after 1 attempts: Subworkflow 'broken' failed: bad child node"


def test_child_still_running_after_its_steps_is_unexpected(make_runtime, registry):
    registry.register(WorkflowSpec(workflow_id="forever", entry_node="a",
                                   nodes={"a": lambda run, ctx: StepPlan(node_id="a", next_node="a")}))
    rt = make_runtime(workflow_registry=registry)
    wf = parent({"workflow_id": "forever"})
    state = rt.tick(workflow=wf, run_id=rt.start(workflow=wf))
    assert state.error == "Effect failed after 1 attempts: Unexpected subworkflow status: running"
