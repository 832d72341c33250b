"""Fencing tokens (issue 13 item 1): every grant of a run's lease adds one to its token; a
commit or append carrying an older token is refused (``StaleLease``), a message carrying
one is dropped, each ledger entry keeps its writer's token, and tools read theirs from
``current_execution()`` so that a downstream store can refuse a stale write too.

Store and engine stories on real Redis and fakeredis (the stub dispatcher delivers the
messages); the acceptance on real Celery workers, one of them paused with SIGSTOP, at the end.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from runtime import RunState, RunStatus, StaleLease, StepRecord, VersionConflict, current_execution
from stores.redis import RedisBackend
from stores.redis.dispatch import Dispatch
from workers.registry import registry
from workers.settings import WorkerSettings
from workers.testing import DrainLimitReached, StubDispatcher, make_stub_engine

import support.celery_scenarios  # noqa: F401  (registers the workflows)
from support.celery_workers import WorkerGroup
from support.fencing_scenarios import TokenStore, started
from support.processes import until

pytestmark = pytest.mark.timeout(60)


def token_of(store: RedisBackend, run_id: str) -> int:
    return int(store.client.hget(store.keys.run(run_id), "g") or 0)


def ledger_tokens(store: RedisBackend, run_id: str) -> list[int]:
    return [int(fields[b"g"]) for _id, fields in store.client.xrange(store.keys.ledger(run_id))]


def expire_lease(store: RedisBackend, run_id: str) -> None:
    """The run's lease runs out now (its holder is paused, or dead)."""
    store.client.zadd(store.keys.leases(), {run_id: 0}, xx=True)


# -- the store -------------------------------------------------------------------------------


def test_each_lease_grant_adds_one_and_an_older_token_is_refused_with_nothing_written(store):
    run = RunState.new(workflow_id="w", entry_node="a", run_id="f1", vars={})
    store.commit(run, [], create=True, dispatch=Dispatch.tick(), lease_ms=1000)
    assert token_of(store, "f1") == store.fence_of("f1") == 1
    # The sweep grants the expired lease again: the token goes up, the version does not.
    assert store.grant_lease("f1", 1, 1000, 1_000) == 2
    assert store.grant_lease("f1", 7, 1000, 2_000) is None  # not at that version: nothing granted
    assert token_of(store, "f1") == 2
    assert store.load_for_driver("f1").regranted_ms == 1_000  # when the lease first expired

    # The first holder (token 1) commits: refused, and told which tokens.
    record = StepRecord.start(run=run, node_id="a", effect=None)
    with pytest.raises(StaleLease) as refused:
        store.commit(run, [record], expected_version=1, dispatch=Dispatch.tick(), lease_ms=1000, fence=1)
    assert (refused.value.token, refused.value.current, refused.value.run_id) == (1, 2, "f1")
    assert isinstance(refused.value, VersionConflict)  # handled as any lost race: the work is dropped
    assert "fencing token 1, the run's is 2" in str(refused.value)
    assert store.client.xlen(store.keys.ledger("f1")) == 0 and record.record_hash is None
    assert int(store.client.hget(store.keys.run("f1"), "v")) == 1
    with pytest.raises(StaleLease):
        store.append([StepRecord.start(run=run, node_id="a", effect=None)], run_id="f1", fence=1)
    assert store.client.xlen(store.keys.ledger("f1")) == 0

    # The holder of the newest token commits; its records carry it beside them, outside the hash.
    assert store.grant_lease("f1", 1, 1000, 3_000) == 3  # expired again: the first expiry is kept
    assert store.load_for_driver("f1").regranted_ms == 1_000
    store.commit(run, [StepRecord.start(run=run, node_id="a", effect=None)], expected_version=1,
                 dispatch=Dispatch.tick(), lease_ms=1000, fence=3)
    assert token_of(store, "f1") == store.fence_of("f1") == 4  # its lease was a grant too
    assert store.load_for_driver("f1").regranted_ms is None  # a commit is progress
    store.append([StepRecord.start(run=run, node_id="a", effect=None)], run_id="f1", fence=4)
    # A writer holding no lease (a producer, an operator) is checked by version only.
    store.commit(run, [StepRecord.start(run=run, node_id="a", effect=None)])
    assert ledger_tokens(store, "f1") == [3, 4, 4]
    assert store.ledger.verify("f1")["ok"]


def test_a_renewal_needs_the_token_still_held(store):
    run = RunState.new(workflow_id="w", entry_node="a", run_id="f2", vars={})
    store.commit(run, [], create=True, dispatch=Dispatch.tick(), lease_ms=1000)
    before = store.client.zscore(store.keys.leases(), "f2")
    assert store.renew_held_lease("f2", 1, 60_000) is True
    assert store.client.zscore(store.keys.leases(), "f2") > before + 30_000
    store.grant_lease("f2", 1, 1000, store.time_ms())
    assert store.renew_held_lease("f2", 1, 600_000) is False  # granted to another since
    assert store.client.zscore(store.keys.leases(), "f2") < before + 60_000


# -- the engine, messages delivered by the stub ----------------------------------------------


def engine_of(store: RedisBackend, **settings: Any) -> tuple[Any, StubDispatcher]:
    # (every step its own message: these tests look at the messages' tokens)
    return make_stub_engine(store, registry, WorkerSettings(**{"effect_lease_s": 60, "steps_per_task": 1,
                                                                **settings}))


def deliver_one(engine: Any, stub: StubDispatcher) -> None:
    try:
        stub.drain(engine, max_messages=1)
    except DrainLimitReached:
        pass  # what it sent stays queued


def test_messages_carry_the_token_and_one_sent_before_a_new_grant_is_dropped(store, tmp_path):
    engine, stub = engine_of(store)
    run_id = engine.create(registry.workflows.get_or_raise("fenced"), vars={"store": str(tmp_path / "db")})
    deliver_one(engine, stub)  # the tick asks for the tool call
    [first] = stub.pending
    assert first.kind == "effect" and first.args[-1] == token_of(store, run_id) == 2
    # Its worker is slow to take it: the lease runs out and the sweep sends it again.
    expire_lease(store, run_id)
    assert engine.sweep()["leases"] == 1
    [_, again] = stub.pending
    assert again.args[:-1] == first.args[:-1] and again.args[-1] == 3
    # The first message, when it comes, is dropped: the tool runs once, for the new grant.
    results = [d.result for d in stub.run_until_quiet(engine)]
    assert results == ["stale", "next", "finish"]
    assert [(e["token"], e["ok"]) for e in TokenStore(tmp_path / "db").entries()] == [(3, True)]
    assert store.runs.load(run_id).status == RunStatus.COMPLETED


def test_a_paused_holder_is_refused_after_its_lease_was_granted_again(store, tmp_path):
    """Worker A runs the tool and stalls past its lease; B takes over with the next token and
    completes the run; A wakes: the store refuses its write and the run its commit."""
    engine, stub = engine_of(store)
    gate = tmp_path / "gate"
    Path(f"{gate}.hold").write_text("")
    run_id = engine.create(registry.workflows.get_or_raise("fenced"),
                           vars={"store": str(tmp_path / "db"), "gate": str(gate)})
    deliver_one(engine, stub)
    [message] = stub.pending
    stub.drop(message)  # worker A took it
    outcome: list[str] = []
    worker_a = threading.Thread(target=lambda: outcome.append(engine.effect(*message.args)))
    worker_a.start()
    deadline = time.monotonic() + 10
    while not started(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [s["token"] for s in started(gate)] == [2]

    expire_lease(store, run_id)  # A stalls (a GC pause, SIGSTOP) past its lease
    engine.sweep()
    assert [d.result for d in stub.run_until_quiet(engine)] == ["next", "finish"]  # worker B, token 3
    assert store.runs.load(run_id).status == RunStatus.COMPLETED

    Path(f"{gate}.hold").unlink()  # A goes on
    worker_a.join(10)
    assert outcome == ["stale"]
    assert [(e["token"], e["ok"]) for e in TokenStore(tmp_path / "db").entries()] == [(3, True), (2, False)]
    ledger = store.ledger.list(run_id)
    tool_records = [r for r in ledger if r["node_id"] == "write"]
    # One started record per attempt series and one completion: A's outcome left no trace.
    assert [r["status"] for r in tool_records] == ["started", "completed"]
    assert tool_records[-1]["result"]["results"][0]["output"]["token"] == 3
    assert store.ledger.verify(run_id)["ok"]


def test_node_handlers_see_their_execution(store):
    seen: list[Any] = []
    from runtime import StepPlan, WorkflowSpec

    def look(run: Any, ctx: Any) -> StepPlan:
        seen.append(current_execution())
        return StepPlan(node_id="look", complete_output={})

    registry.register_workflow(WorkflowSpec(workflow_id="look", entry_node="look", nodes={"look": look}), replace=True)
    engine, stub = engine_of(store)
    run_id = engine.create(registry.workflows.get_or_raise("look"))
    stub.run_until_quiet(engine)
    [ex] = seen
    assert (ex.run_id, ex.node_id, ex.fencing_token, ex.idempotency_key) == (run_id, "look", 1, None)
    assert current_execution() is None  # only while the node runs


# -- the acceptance, on real workers -----------------------------------------------------------


@pytest.mark.timeout(180)
def test_a_worker_paused_past_its_lease_cannot_commit_or_write_downstream(redis_server, tmp_path):
    g = WorkerGroup(redis_server.url, tmp_path / "g", tick_lease_s=2, effect_lease_s=2, sweep_period_s=0.5,
                    imports="support.celery_scenarios,support.fencing_scenarios")
    try:
        a = g.start_worker("a")
        g.start_beat()
        client = g.client()
        gate, db = tmp_path / "gate", tmp_path / "db"
        Path(f"{gate}.hold").write_text("")
        run_id = client.start("fenced", vars={"store": str(db), "gate": str(gate)})
        marks = until(lambda: started(gate), timeout=30)
        assert marks, "worker A never started the tool"
        [first] = marks
        assert first["pid"] == a.pid and first["token"] == 2
        os.killpg(a.pid, signal.SIGSTOP)
        try:
            g.start_worker("b")
            # The sweep grants the lease again (token 3) once A's runs out; B runs the tool.
            state = client.wait_for(run_id, timeout=60)
            assert state.status == RunStatus.COMPLETED, state.error
            assert state.output["written"]["results"][0]["output"]["token"] == 3
        finally:
            Path(f"{gate}.hold").unlink()
            os.killpg(a.pid, signal.SIGCONT)
        entries = until(lambda: [e for e in TokenStore(db).entries() if e["pid"] == a.pid], timeout=30)
        assert [(e["token"], e["ok"]) for e in entries] == [(2, False)]  # the downstream store refused it
        assert until(lambda: "stale lease" in g.log("a"), timeout=30), "worker A's commit was not refused"
        # (the run's token is past 3 by then: B's commit granted the lease of the next tick)
        assert re.search(r"holds fencing token 2, the run's is [3-9]", g.log("a"))
        ledger = client.get_ledger(run_id)
        assert [r["status"] for r in ledger if r["node_id"] == "write"] == ["started", "completed"]
        assert client.verify(run_id)["ok"]
        assert [(e["token"], e["ok"]) for e in TokenStore(db).entries()] == [(3, True), (2, False)]
    finally:
        g.close()
