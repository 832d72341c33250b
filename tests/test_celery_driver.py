"""The Celery driver against the in-process runtime: same workflows, same final states, same ledgers.

Every scenario runs twice with the same run id: in process (``Runtime`` on in-memory,
hash-chained stores) and through real Celery worker processes on the session's
redis-server. Run ids being equal, idempotency keys, wait keys and child ids are equal
too, so the ledgers compare record by record, clocks and hashes aside. Decisions D5 and D6
name the differences, and their tests below assert them.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from runtime import RunStatus
from runtime.errors import RunAlreadyExists, RunNotWaiting, WaitKeyMismatch, WorkflowNotRegistered
from workers.registry import registry

import support.celery_scenarios  # noqa: F401  (registers the workflows in this process too)
from support.celery_workers import WorkerGroup
from support.driver_compare import SCENARIOS, check_sync_child_parent, comparable, in_process, play_in_process

pytestmark = pytest.mark.timeout(120)

TERMINAL = ("completed", "failed", "cancelled")



def play_celery(client: Any, workflow_id: str, run_id: str, vars: dict[str, Any], actions: list) -> Any:
    client.start(workflow_id, vars=vars, run_id=run_id)
    state = client.wait_for(run_id, timeout=30)
    for action, arg in actions:
        assert state.status == RunStatus.WAITING, state
        if action == "respond":
            client.respond(run_id, arg)
        elif action == "emit":
            assert client.emit(arg[0], arg[1]) == [run_id]
        state = client.wait_for(run_id, TERMINAL, timeout=30)
    return client.wait_for(run_id, TERMINAL if actions else None, timeout=30)



@pytest.mark.parametrize("workflow_id,vars,actions", SCENARIOS,
                         ids=[f"{s[0]}-{i}" for i, s in enumerate(SCENARIOS)])
def test_same_final_state_and_ledger_as_in_process(client, workflow_id, vars, actions):
    run_id = f"eq-{workflow_id}-{uuid.uuid4().hex[:8]}"
    rt = in_process()
    play_in_process(rt, workflow_id, run_id, vars, actions)
    play_celery(client, workflow_id, run_id, vars, actions)
    expected = comparable(rt.get_state(run_id), rt.get_ledger(run_id))
    got = comparable(client.get_state(run_id), client.get_ledger(run_id))
    assert got[0] == expected[0]
    assert got[1] == expected[1]
    assert client.verify(run_id)["ok"]
    # Nothing is left for the sweep to do for a run that ended or waits.
    assert client.backend.client.zscore(client.backend.keys.leases(), run_id) is None


def test_each_effect_runs_on_its_own_queue(group, client):
    run_id = client.start("agent")
    client.wait_for(run_id, timeout=30)
    log = group.log("w1")
    # The worker log names each task; its route is the queue of its kind.
    assert "abstractruntime.effect.llm" in log and "abstractruntime.effect.tools" in log
    routes = client.app.conf.task_routes
    assert routes["abstractruntime.effect.llm"]["queue"] == "llm"
    assert routes["abstractruntime.effect.tools"]["queue"] == "tools"
    assert routes["abstractruntime.effect.subworkflow"]["queue"] == "subworkflows"
    assert routes["abstractruntime.wake"]["queue"] == "timers"
    assert routes["abstractruntime.sweep"]["queue"] == "maintenance"
    assert client.app.conf.accept_content == ["msgpack"]
    assert client.app.conf.task_acks_late and client.app.conf.task_reject_on_worker_lost


# -- D5 and D6: the intended differences -------------------------------------------------------------

def test_d5_a_raising_node_is_retried_then_fails_the_run_with_a_record(client):
    """D5: in process the error reaches the caller; on workers the run fails, naming node and type."""
    rt = in_process()
    run_id = f"d5-{uuid.uuid4().hex[:8]}"
    wf = registry.workflows.get_or_raise("raises")
    rt.start(workflow=wf, run_id=run_id)
    with pytest.raises(RuntimeError, match="node blew up"):
        rt.tick(workflow=wf, run_id=run_id)
    assert rt.get_state(run_id).status == RunStatus.RUNNING and rt.get_ledger(run_id) == []

    client.start("raises", run_id=run_id)
    state = client.wait_for(run_id, timeout=30)
    assert state.status == RunStatus.FAILED
    assert state.error == "Node 'boom' raised RuntimeError: node blew up"
    ledger = client.get_ledger(run_id)
    assert [(r["node_id"], r["status"], r["error"]) for r in ledger] == [("boom", "failed", state.error)]


def test_d5_an_effect_completing_in_a_plan_going_nowhere_fails_the_run(client):
    run_id = client.start("nowhere")
    state = client.wait_for(run_id, timeout=30)
    assert state.status == RunStatus.FAILED
    assert "plan has no next_node" in state.error
    assert [r["status"] for r in client.get_ledger(run_id)] == ["started", "completed", "failed"]


def test_vars_the_store_refuses_fail_the_run_naming_the_key(client):
    run_id = client.start("bad_vars")
    state = client.wait_for(run_id, timeout=30)
    assert state.status == RunStatus.FAILED
    assert state.error.startswith("Node 'bad' raised PayloadNotSerializable:") and "tags" in state.error
    assert "tags" not in state.vars  # the run as last saved, not what the node left
    assert [(r["node_id"], r["status"]) for r in client.get_ledger(run_id)] == [("bad", "failed")]


def test_an_effect_result_over_the_size_limit_is_a_failed_attempt(group, redis_server, tmp_path):
    g = WorkerGroup(redis_server.url, tmp_path / "small", redis_max_value_bytes=1_000_000)
    try:
        g.start_worker("small")
        c = g.client()
        state = c.wait_for(c.start("huge_result"), timeout=30)
        assert state.status == RunStatus.FAILED
        assert "Effect result refused by the store" in state.error and "over the limit" in state.error
        assert [r["status"] for r in c.get_ledger(state.run_id)] == ["started", "failed"] * 3
    finally:
        g.close()


def test_d6_a_sync_child_parks_the_parent_which_resumes_when_the_child_ends(client):
    """D6: in process the sync child runs inside the parent's effect; on workers it is ticked on
    its own and the parent waits (one `waiting` record) and resumes with the same result."""
    run_id = f"d6-{uuid.uuid4().hex[:8]}"
    rt = in_process()
    play_in_process(rt, "parent_sync", run_id, {}, [])
    client.start("parent_sync", run_id=run_id)
    state = client.wait_for(run_id, TERMINAL, timeout=30)
    child_id = check_sync_child_parent(state, client.get_ledger(run_id), rt)
    assert client.get_state(child_id).parent_run_id == run_id
    assert comparable(client.get_state(child_id), client.get_ledger(child_id)) == \
        comparable(rt.get_state(child_id), rt.get_ledger(child_id))


def test_a_redelivered_start_finds_its_child_instead_of_making_a_second(client):
    """The START_SUBWORKFLOW handler run twice for one attempt (a worker died before the parent's
    commit, and the message came again) makes one child, whose id comes from the attempt."""
    from runtime import Effect
    from runtime.runtime import child_run_id
    from runtime.step import PendingEffect, current_effect_call

    parent_id = client.start("ask")  # any run can be the parent here
    parent = client.wait_for(parent_id, timeout=30)
    effect = Effect(type="start_subworkflow", payload={"workflow_id": "child_asks"}, result_key="c")
    pending = PendingEffect(run_id=parent_id, node_id="act", effect=effect, idempotency_key="k" * 32,
                            default_next_node="done")
    token = current_effect_call.set(pending)
    try:
        first = client.engine._start_subworkflow(parent, effect, "done")
        second = client.engine._start_subworkflow(parent, effect, "done")
    finally:
        current_effect_call.reset(token)
    child_id = child_run_id(parent_id, "k" * 32, 1)
    assert first.wait.details["sub_run_id"] == second.wait.details["sub_run_id"] == child_id
    kids = client.backend.client.smembers(client.backend.keys.children(parent_id))
    assert kids == {child_id.encode()}
    assert client.get_state(child_id).parent_run_id == parent_id
    client.cancel(parent_id)


def test_d6_async_children_are_ticked_by_the_workers(client):
    run_id = client.start("parent_async")
    parent = client.wait_for(run_id, TERMINAL, timeout=30)
    child = client.wait_for(parent.vars["child"]["sub_run_id"], TERMINAL, timeout=30)
    assert child.status == RunStatus.COMPLETED and child.output == {"visited": 3}


def test_d6_a_failing_child_fails_its_waiting_parent(client):
    run_id = client.start("parent_of_failing")
    parent = client.wait_for(run_id, TERMINAL, timeout=30)
    assert parent.status == RunStatus.FAILED
    assert parent.error == "Subworkflow 'raises' failed: Node 'boom' raised RuntimeError: node blew up"
    assert [r["status"] for r in client.get_ledger(run_id)] == ["started", "waiting", "failed"]


def test_d6_cancelling_a_waited_for_child_fails_its_parent(client):
    run_id = client.start("parent_of_asking")
    client.wait_for(run_id, timeout=30)
    child_id = client.get_state(run_id).waiting.details["sub_run_id"]
    client.wait_for(child_id, ["waiting"], timeout=30)
    assert [s.run_id for s in client.cancel(child_id, reason="not needed")] == [child_id]
    parent = client.wait_for(run_id, TERMINAL, timeout=30)
    assert parent.status == RunStatus.FAILED
    assert parent.error == "Subworkflow 'child_asks' was cancelled: not needed"


def test_d6_cancelling_a_parent_cancels_its_children_transitively(client):
    run_id = client.start("grandparent")
    client.wait_for(run_id, timeout=30)
    # The grandchild asks a question; wait until it does.
    parent_id = client.get_state(run_id).waiting.details["sub_run_id"]
    client.wait_for(parent_id, ["waiting"], timeout=30)
    child_id = client.get_state(parent_id).waiting.details["sub_run_id"]
    assert client.wait_for(child_id, ["waiting"], timeout=30).waiting.prompt == "child asks"
    cancelled = client.cancel(run_id, reason="stop")
    assert [s.run_id for s in cancelled] == [run_id, parent_id, child_id]
    for rid in (run_id, parent_id, child_id):
        state = client.get_state(rid)
        assert state.status == RunStatus.CANCELLED and state.error == "stop" and state.waiting is None
    # A late answer to the cancelled grandchild is refused and changes nothing.
    with pytest.raises(RunNotWaiting):
        client.respond(child_id, "too late")


# -- the producer API ------------------------------------------------------------------------------

def test_explicit_run_ids_must_be_free_and_workflows_known(client):
    run_id = f"mine-{uuid.uuid4().hex[:8]}"
    assert client.start("chain", run_id=run_id) == run_id
    client.wait_for(run_id, TERMINAL, timeout=30)
    before = client.get_ledger(run_id)
    with pytest.raises(RunAlreadyExists):
        client.start("chain", run_id=run_id)
    assert client.get_ledger(run_id) == before
    with pytest.raises(WorkflowNotRegistered, match="no_such_workflow.*celery_scenarios"):
        client.start("no_such_workflow")


def test_resume_checks_the_wait_key_and_emit_reaches_every_waiting_run(client):
    ids = [client.start("wait_event") for _ in range(3)]
    for rid in ids:
        client.wait_for(rid, timeout=30)
    with pytest.raises(WaitKeyMismatch):
        client.resume(ids[0], wait_key="evt:other", payload={})
    assert client.emit("evt:nobody", {}) == []
    assert sorted(client.emit("evt:go", {"v": 7})) == sorted(ids)
    for rid in ids:
        state = client.wait_for(rid, TERMINAL, timeout=30)
        assert state.output["evt"] == {"v": 7}


def test_follow_ledger_and_counts(client):
    run_id = client.start("agent")
    client.wait_for(run_id, timeout=30)
    client.respond(run_id, "yes")
    records = list(client.follow_ledger(run_id, block_ms=2000))
    # the last "ask" is the delivery of the answer (wait_answer), recorded at the node that asked
    assert [r["node_id"] for r in records] == ["think", "think", "act", "act", "ask", "ask", "ask", "done"]
    assert records[6]["effect"]["type"] == "wait_answer" and records[6]["result"]["answer"] == "yes"
    assert client.count(status="completed") >= 1
    assert client.count(workflow_id="agent") == len(client.list_runs(workflow_id="agent", limit=1000))
    assert run_id in [r.run_id for r in client.list_runs(status="completed", workflow_id="agent")]


def test_wait_for_times_out_with_the_state_it_saw(client):
    from workers.client import WaitTimeout

    run_id = client.start("ask")
    client.wait_for(run_id, timeout=30)
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout, match="did not reach completed within 0.3s; it is waiting"):
        client.wait_for(run_id, ["completed"], timeout=0.3)
    assert time.monotonic() - t0 < 5


# -- stale and duplicate messages ------------------------------------------------------------------

def test_stale_and_duplicate_messages_change_nothing(client):
    """Every kind of message, sent again after the run moved on, is a no-op."""
    run_id = client.start("agent")
    client.wait_for(run_id, timeout=30)
    client.respond(run_id, "yes")
    client.wait_for(run_id, TERMINAL, timeout=30)
    ledger = client.get_ledger(run_id)
    state = client.get_state(run_id)
    key = next(r["idempotency_key"] for r in ledger if r["node_id"] == "think")
    engine = client.engine
    for v in range(0, 12):
        assert engine.tick(run_id, v) in ("stale",)
    assert engine.tick(run_id, None) == "stale"
    assert engine.effect(run_id, None, key, 1) == "stale"
    assert engine.wake(run_id) == "stale"
    assert client.get_ledger(run_id) == ledger
    assert client.get_state(run_id).to_dict() == state.to_dict()


def test_an_effect_result_for_a_cancelled_run_is_not_applied(client):
    run_id = client.start("llm_slow")
    # Wait until the effect task has it (the `started` record is in), then cancel.
    deadline = time.monotonic() + 30
    while not client.get_ledger(run_id) and time.monotonic() < deadline:
        time.sleep(0.02)
    client.cancel(run_id, reason="changed my mind")
    time.sleep(2.0)  # the slow LLM answers after 1.5 s
    state = client.get_state(run_id)
    assert state.status == RunStatus.CANCELLED and "llm" not in state.vars
    # The effect's `started` record, then the operator's cancel (workers record it; 0.2.0 did not).
    records = client.get_ledger(run_id)
    assert [r["status"] for r in records] == ["started", "completed"]
    assert records[1]["effect"]["type"] == "operator_cancel" and records[1]["result"]["reason"] == "changed my mind"


# -- more nodes per task -------------------------------------------------------------------------------

def test_k_nodes_per_tick_commit_each_node_and_give_the_same_result(redis_server, tmp_path):
    g = WorkerGroup(redis_server.url, tmp_path / "k16", nodes_per_tick=16)
    try:
        g.start_worker("k")
        c = g.client()
        run_id = f"k-{uuid.uuid4().hex[:8]}"
        rt = in_process()
        play_in_process(rt, "chain2000", run_id, {}, [])
        events_before = c.backend.client.xlen(c.backend.keys.events())
        c.start("chain2000", run_id=run_id)
        state = c.wait_for(run_id, TERMINAL, timeout=60)
        assert comparable(state, c.get_ledger(run_id)) == comparable(rt.get_state(run_id), rt.get_ledger(run_id))
        # One commit per node (each is an event), not one per task.
        assert c.backend.client.xlen(c.backend.keys.events()) - events_before >= 2000
        assert "abstractruntime.tick" in g.log("k")
    finally:
        g.close()


def test_a_worker_clock_ahead_never_wakes_a_run_early(client, monkeypatch):
    """Wait and wake times are judged by the Redis clock: this process's clock, put 30 s ahead,
    takes a time 5 s away for a past one, but the run still waits, and an early wake waits too."""
    import datetime as dt

    import runtime.effects as effects

    real = dt.datetime

    class Ahead(real):
        @classmethod
        def now(cls, tz=None):
            return real.now(tz) + dt.timedelta(seconds=30)

    until = (real.now(dt.timezone.utc) + dt.timedelta(seconds=5)).isoformat()
    monkeypatch.setattr(effects, "datetime", Ahead)
    engine = client.engine
    # Created without its first message: only this process (with the clock ahead) ticks it.
    run_id = engine.create(registry.workflows.get_or_raise("sleep_until"), vars={"until": until}, dispatch=False)
    assert engine.tick(run_id) == "park"
    state = client.get_state(run_id)
    assert state.status == RunStatus.WAITING and state.waiting.until == until
    assert engine.wake(run_id) in ("early", "stale")
    assert client.get_state(run_id).status == RunStatus.WAITING
    assert client.wait_for(run_id, TERMINAL, timeout=30).status == RunStatus.COMPLETED
