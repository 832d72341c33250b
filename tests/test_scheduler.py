"""The in-process scheduler, ScheduledRuntime and the workflow registry."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from runtime import (
    Effect,
    EffectType,
    InMemoryLedgerStore,
    RunNotWaiting,
    RunStatus,
    Runtime,
    Scheduler,
    SchedulerAlreadyRunning,
    WaitReason,
    WorkflowAlreadyRegistered,
    WorkflowNotRegistered,
    WorkflowRegistry,
    create_scheduled_runtime,
)

from support.scenarios import ask, chain, one_effect


def wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def sleeper(seconds: float, workflow_id: str = "sleeper"):
    until = (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat()
    return one_effect(Effect(type=EffectType.WAIT_UNTIL, payload={"until": until}), workflow_id=workflow_id)


def test_registry_contract():
    reg = WorkflowRegistry()
    wf = chain(1, "w1")
    reg.register(wf)
    assert "w1" in reg and len(reg) == 1 and reg.list_ids() == ["w1"] and reg.get("w1") is wf
    with pytest.raises(WorkflowAlreadyRegistered, match="'w1' is already registered"):
        reg.register(wf)
    with pytest.raises(KeyError, match="'nope' is not registered"):
        reg.get_or_raise("nope")
    assert reg.get("nope") is None
    reg.unregister("w1")
    with pytest.raises(WorkflowNotRegistered):
        reg.unregister("w1")


def test_scheduler_needs_a_queryable_store():
    class Plain:
        def save(self, run): ...
        def load(self, run_id): ...

    rt = Runtime(run_store=Plain(), ledger_store=InMemoryLedgerStore())
    with pytest.raises(TypeError, match="QueryableRunStore"):
        Scheduler(runtime=rt, registry=WorkflowRegistry())


def test_scheduler_thread_wakes_due_timers(make_runtime):
    reg = WorkflowRegistry()
    rt = make_runtime(workflow_registry=reg)
    resumed = []
    sched = Scheduler(runtime=rt, registry=reg, poll_interval_s=0.05, on_run_resumed=resumed.append)
    wf = sleeper(0.3)
    reg.register(wf)
    run_id = rt.start(workflow=wf)
    assert rt.tick(workflow=wf, run_id=run_id).status == RunStatus.WAITING
    sched.start()
    try:
        with pytest.raises(SchedulerAlreadyRunning, match="Scheduler is already running"):
            sched.start()
        assert any(t.name == "abstractruntime-scheduler" and t.daemon for t in threading.enumerate())
        wait_for(lambda: rt.get_state(run_id).status == RunStatus.COMPLETED)
    finally:
        sched.stop()
    assert not sched.is_running
    stats = sched.stats
    assert stats.runs_resumed == 1 and stats.poll_cycles >= 1 and stats.last_poll_at
    assert [s.run_id for s in resumed] == [run_id]


def test_poll_once_reports_failures_through_callbacks(make_runtime, backend):
    reg = WorkflowRegistry()
    rt = make_runtime(workflow_registry=reg)
    failures = []

    def bad_callback(state):
        raise RuntimeError("callbacks must not break the scheduler")

    sched = Scheduler(runtime=rt, registry=reg, on_run_resumed=bad_callback,
                      on_run_failed=lambda rid, exc: failures.append((rid, exc)), max_errors_kept=1)
    unknown = sleeper(3600, "unregistered")
    known = sleeper(3600, "known")
    reg.register(known)
    ids = []
    for wf in (unknown, known, unknown):
        run_id = rt.start(workflow=wf)
        rt.tick(workflow=wf, run_id=run_id)
        run = backend.run_store.load(run_id)
        run.waiting.until = "2000-01-01T00:00:00Z"
        backend.run_store.save(run)
        ids.append(run_id)
    assert sched.poll_once() == 1
    assert rt.get_state(ids[1]).status == RunStatus.COMPLETED
    assert sorted(rid for rid, _ in failures) == sorted([ids[0], ids[2]])
    assert all(isinstance(exc, KeyError) for _, exc in failures)
    stats = sched.stats
    assert stats.runs_failed == 2 and len(stats.errors) == 1, "only the newest max_errors_kept are kept"
    assert f"Run {ids[0]}: " in stats.errors[0] or f"Run {ids[2]}: " in stats.errors[0]


def test_resume_event_and_find_waiting_runs(make_runtime):
    reg = WorkflowRegistry()
    rt = make_runtime(workflow_registry=reg)
    sched = Scheduler(runtime=rt, registry=reg)
    wf = ask()
    reg.register(wf)
    a, b = rt.start(workflow=wf), rt.start(workflow=wf)
    running = rt.start(workflow=chain(2))
    for rid in (a, b):
        rt.tick(workflow=wf, run_id=rid)
    found = sched.find_waiting_runs(wait_reason=WaitReason.USER)
    assert {r.run_id for r in found} == {a, b}
    assert sched.find_waiting_runs(wait_reason=WaitReason.EVENT) == []
    assert sched.find_waiting_runs(workflow_id="ask", limit=1)[0].run_id == b, "newest first"
    with pytest.raises(RunNotWaiting, match=f"Run '{running}' is not waiting \\(status=running\\)"):
        sched.resume_event(run_id=running, wait_key=None, payload={})
    state = sched.resume_event(run_id=a, wait_key=f"user:{a}:act", payload="hi")
    assert state.status == RunStatus.COMPLETED and state.output == {"answer": "hi"}


def test_cancel_with_children_walks_the_tree(make_runtime, backend):
    reg = WorkflowRegistry()
    rt = make_runtime(workflow_registry=reg)
    sched = Scheduler(runtime=rt, registry=reg)
    wf = ask()
    root = rt.start(workflow=wf)
    rt.tick(workflow=wf, run_id=root)
    kid = rt.start(workflow=chain(2), parent_run_id=root)
    grandkid = rt.start(workflow=wf, parent_run_id=kid)
    rt.tick(workflow=wf, run_id=grandkid)
    done_kid = rt.start(workflow=chain(1), parent_run_id=root)
    rt.tick(workflow=chain(1), run_id=done_kid)
    cancelled = sched.cancel_with_children(root, reason="shutdown")
    assert [r.run_id for r in cancelled] == [root, kid, grandkid]
    for rid in (root, kid, grandkid):
        state = rt.get_state(rid)
        assert state.status == RunStatus.CANCELLED and state.error == "shutdown"
    assert rt.get_state(done_kid).status == RunStatus.COMPLETED
    assert sched.cancel_with_children("missing") == []


def test_scheduled_runtime_zero_config_run_and_respond():
    sr = create_scheduled_runtime(poll_interval_s=0.05)
    try:
        assert sr.is_running
        wf = ask("Name?")
        run_id, state = sr.run(wf)
        assert state.status == RunStatus.WAITING and "ask" in sr.registry
        state = sr.respond(run_id, {"name": "Ada"})
        assert state.output == {"answer": {"name": "Ada"}}
        with pytest.raises(RunNotWaiting):
            sr.respond(run_id, {})
        assert len(sr.get_ledger(run_id)) == 3 and sr.get_state(run_id).status == RunStatus.COMPLETED

        timer = sleeper(0.2, "timer")
        run_id, state = sr.run(timer)
        assert state.status == RunStatus.WAITING
        wait_for(lambda: sr.get_state(run_id).status == RunStatus.COMPLETED)
        assert sr.stats.runs_resumed == 1
    finally:
        sr.stop()
    assert not sr.is_running


def test_scheduled_runtime_respond_needs_a_wait_key():
    with create_scheduled_runtime(auto_start=False) as sr:
        wf = sleeper(3600, "t")
        run_id, state = sr.run(wf)
        assert state.waiting.wait_key is None
        with pytest.raises(RunNotWaiting, match="has no wait_key"):
            sr.respond(run_id, {})
        cancelled = sr.cancel_with_children(run_id)
        assert [r.status for r in cancelled] == [RunStatus.CANCELLED]
