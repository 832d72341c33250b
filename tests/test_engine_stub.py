"""The driver's scenarios through ``Engine`` and the stub dispatcher, in process, in seconds.

The same workflows as ``test_celery_driver.py`` (``celery_scenarios``), on a real
redis-server and on fakeredis, each test under its own key prefix: every message the
engine sends is delivered by ``workers.testing.StubDispatcher`` in this process instead of
by Celery workers. What only real processes show (a killed worker, the broker's
redelivery, timers on the wall clock, routing and msgpack) stays in the worker suites.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from runtime import (
    RunStatus,
    StepPlan,
    WorkflowSpec,
)
from runtime.errors import RunAlreadyExists, RunNotWaiting, WaitKeyMismatch
from stores.redis import RedisBackend
from workers.registry import Registry, registry
from workers.settings import WorkerSettings
from workers.testing import DrainLimitReached, StubDispatcher, make_stub_engine

import support.celery_scenarios  # noqa: F401  (registers the workflows with the process-wide registry)
from support.backends import redis_backend
from support.driver_compare import (
    SCENARIOS,
    check_sync_child_parent,
    comparable,
    delivery_records,
    in_process,
    play_in_process,
)

pytestmark = pytest.mark.timeout(60)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "testing.md"


# -- fixtures and helpers ------------------------------------------------------------------------

@pytest.fixture(params=["redis", "fakeredis"])
def redis_client(request: pytest.FixtureRequest) -> Any:
    if request.param == "redis":
        return request.getfixturevalue("redis_server").client()
    import fakeredis

    return fakeredis.FakeRedis(server=request.getfixturevalue("fake_redis_server"))


@pytest.fixture
def store(redis_client: Any) -> RedisBackend:
    """A backend under a key prefix of its own: no test sees another's runs."""
    return redis_backend(redis_client)


def stub_engine(store: RedisBackend, **settings: Any) -> tuple[Any, StubDispatcher]:
    """The engine on the stub, every step its own message (``steps_per_task=1``) unless the
    test says otherwise: these tests look at the messages."""
    return make_stub_engine(store, registry, WorkerSettings(**{"steps_per_task": 1, **settings}))


def state_of(store: RedisBackend, run_id: str) -> Any:
    state = store.runs.load(run_id)
    assert state is not None, run_id
    return state


def play_stub(engine: Any, stub: StubDispatcher, workflow_id: str, run_id: str, vars: dict[str, Any],
              actions: list) -> Any:
    engine.create(registry.workflows.get_or_raise(workflow_id), vars=vars, run_id=run_id)
    stub.run_until_quiet(engine)
    for action, arg in actions:
        assert state_of(engine.backend, run_id).status == RunStatus.WAITING
        if action == "respond":
            engine.resume(run_id, wait_key=None, payload=arg, action="respond")
        elif action == "emit":
            assert engine.emit(arg[0], arg[1]) == [run_id]
        stub.run_until_quiet(engine)
    return state_of(engine.backend, run_id)


def results(deliveries: list[Any]) -> list[str]:
    return [d.result for d in deliveries]


def leased(store: RedisBackend, run_id: str) -> bool:
    return store.client.zscore(store.keys.leases(), run_id) is not None


# -- the driver scenarios, as on real workers ------------------------------------------------------

#: The real-worker suite's scenarios, and crashy without its kill markers (the recovery suite
#: runs it with them, on workers that die).
SCENARIOS = [*SCENARIOS, ("crashy", {}, [])]


#: Continuation (``workers/engine/inline.py``): every effect runs inside the task that asked for it.
INLINE = {"steps_per_task": 64, "inline_effects": ("tools", "llm", "subworkflows")}
#: ... and without it: every step is its own task (as stub_engine makes it by default).
QUEUED: dict[str, Any] = {}


@pytest.mark.parametrize("mode", ["queued", "inline"])
@pytest.mark.parametrize("workflow_id,vars,actions", SCENARIOS, ids=[f"{s[0]}-{i}" for i, s in enumerate(SCENARIOS)])
def test_same_final_state_and_ledger_as_in_process(store, workflow_id, vars, actions, mode):
    run_id = f"eq-{workflow_id}-{uuid.uuid4().hex[:8]}"
    rt = in_process()
    play_in_process(rt, workflow_id, run_id, vars, actions)
    engine, stub = stub_engine(store, **(INLINE if mode == "inline" else QUEUED))
    state = play_stub(engine, stub, workflow_id, run_id, vars, actions)
    assert comparable(state, store.ledger.list(run_id)) == comparable(rt.get_state(run_id), rt.get_ledger(run_id))
    assert store.ledger.verify(run_id)["ok"]
    # and each delivery is in the chain: its kind, the wait, what was delivered
    waits = {"ask": ("wait_answer", "user:{rid}:act", "y"), "agent": ("wait_answer", "user:{rid}:ask", "yes"),
             "wait_event": ("wait_emit", "evt:go", {"v": 1})}
    want = waits.get(workflow_id)
    got = delivery_records(store.ledger.list(run_id))
    assert got == ([(want[0], want[1].format(rid=run_id), want[2])] if want else [])
    # Nothing is left for the sweep to do for a run that ended or waits, and nothing queued.
    assert not leased(store, run_id)
    assert [m for m in stub.pending if m.run_id == run_id] == []


def test_d5_a_raising_node_is_retried_with_backoff_then_fails_the_run(store):
    # Given a node that always raises, and three attempts with a 1 s backoff doubled each time
    engine, stub = stub_engine(store, tick_max_attempts=3, tick_backoff_s=1.0)
    run_id = engine.create(registry.workflows.get_or_raise("raises"))
    # The first attempt asks for a second one, in a second on the stub clock
    assert results(stub.drain(engine)) == ["retry"]
    [retry] = stub.pending
    # (run, version, attempt, fencing token): the retry keeps the lease the first attempt held
    assert (retry.task, retry.args, retry.countdown, retry.due) == ("abstractruntime.tick", (run_id, 1, 2, 1), 1.0, 1.0)
    # Nothing is delivered before its time
    stub.advance(0.5)
    assert stub.drain(engine) == []
    stub.advance(0.5)
    assert results(stub.drain(engine)) == ["retry"]
    assert [(m.args[2], m.countdown, m.due) for m in stub.pending] == [(3, 2.0, 3.0)]
    # drain(until=...) moves the clock through what falls due on the way
    assert results(stub.drain(engine, until=10.0)) == ["failed"] and stub.now == 10.0
    state = state_of(store, run_id)
    assert state.status == RunStatus.FAILED
    assert state.error == "Node 'boom' raised RuntimeError: node blew up"
    assert [(r["node_id"], r["status"], r["error"]) for r in store.ledger.list(run_id)] == \
        [("boom", "failed", state.error)]
    assert store.last_failure(run_id)["attempt"] == 3
    assert not leased(store, run_id)


def test_d5_an_effect_completing_in_a_plan_going_nowhere_fails_the_run(store):
    engine, stub = stub_engine(store)
    run_id = engine.create(registry.workflows.get_or_raise("nowhere"))
    stub.run_until_quiet(engine)
    state = state_of(store, run_id)
    assert state.status == RunStatus.FAILED and "plan has no next_node" in state.error
    assert [r["status"] for r in store.ledger.list(run_id)] == ["started", "completed", "failed"]


def test_vars_the_store_refuses_fail_the_run_naming_the_key(store):
    engine, stub = stub_engine(store)
    run_id = engine.create(registry.workflows.get_or_raise("bad_vars"))
    assert results(stub.run_until_quiet(engine)) == ["retry", "retry", "failed"]
    state = state_of(store, run_id)
    assert state.status == RunStatus.FAILED
    assert state.error.startswith("Node 'bad' raised PayloadNotSerializable:") and "tags" in state.error
    assert "tags" not in state.vars
    assert [(r["node_id"], r["status"]) for r in store.ledger.list(run_id)] == [("bad", "failed")]


def test_an_effect_result_over_the_size_limit_is_a_failed_attempt(redis_client):
    small = redis_backend(redis_client, max_value_bytes=1_000_000)
    engine, stub = stub_engine(small)
    run_id = engine.create(registry.workflows.get_or_raise("huge_result"))
    stub.run_until_quiet(engine)
    state = state_of(small, run_id)
    assert state.status == RunStatus.FAILED
    assert "Effect result refused by the store" in state.error and "over the limit" in state.error
    assert [r["status"] for r in small.ledger.list(run_id)] == ["started", "failed"] * 3


# -- subworkflows (D6) ------------------------------------------------------------------------------

def test_d6_a_sync_child_parks_the_parent_which_resumes_when_the_child_ends(store):
    run_id = f"d6-{uuid.uuid4().hex[:8]}"
    rt = in_process()
    play_in_process(rt, "parent_sync", run_id, {}, [])
    engine, stub = stub_engine(store)
    state = play_stub(engine, stub, "parent_sync", run_id, {}, [])
    child_id = check_sync_child_parent(state, store.ledger.list(run_id), rt)
    assert comparable(state_of(store, child_id), store.ledger.list(child_id)) == \
        comparable(rt.get_state(child_id), rt.get_ledger(child_id))
    # The child was ticked on its own message, and told its parent when it ended.
    assert [(m.task, m.run_id) for m in stub.sent if m.run_id == child_id][0] == ("abstractruntime.tick", child_id)
    assert not leased(store, child_id) and not leased(store, run_id)


def test_d6_async_children_run_on_their_own(store):
    engine, stub = stub_engine(store)
    run_id = engine.create(registry.workflows.get_or_raise("parent_async"))
    stub.run_until_quiet(engine)
    child = state_of(store, state_of(store, run_id).vars["child"]["sub_run_id"])
    assert child.status == RunStatus.COMPLETED and child.output == {"visited": 3}


def test_d6_a_failing_child_fails_its_waiting_parent(store):
    engine, stub = stub_engine(store)
    run_id = engine.create(registry.workflows.get_or_raise("parent_of_failing"))
    stub.run_until_quiet(engine)
    parent = state_of(store, run_id)
    assert parent.status == RunStatus.FAILED
    assert parent.error == "Subworkflow 'raises' failed: Node 'boom' raised RuntimeError: node blew up"
    assert [r["status"] for r in store.ledger.list(run_id)] == ["started", "waiting", "failed"]


def test_d6_cancelling_a_waited_for_child_fails_its_parent(store):
    engine, stub = stub_engine(store)
    run_id = engine.create(registry.workflows.get_or_raise("parent_of_asking"))
    stub.run_until_quiet(engine)
    child_id = state_of(store, run_id).waiting.details["sub_run_id"]
    assert state_of(store, child_id).status == RunStatus.WAITING
    assert [s.run_id for s in engine.cancel(child_id, reason="not needed")] == [child_id]
    stub.run_until_quiet(engine)
    parent = state_of(store, run_id)
    assert parent.status == RunStatus.FAILED
    assert parent.error == "Subworkflow 'child_asks' was cancelled: not needed"


def test_d6_cancelling_a_parent_cancels_its_children_transitively(store):
    engine, stub = stub_engine(store)
    run_id = engine.create(registry.workflows.get_or_raise("grandparent"))
    stub.run_until_quiet(engine)
    parent_id = state_of(store, run_id).waiting.details["sub_run_id"]
    child_id = state_of(store, parent_id).waiting.details["sub_run_id"]
    assert state_of(store, child_id).waiting.prompt == "child asks"
    assert [s.run_id for s in engine.cancel(run_id, reason="stop")] == [run_id, parent_id, child_id]
    assert stub.run_until_quiet(engine) == []  # a cancel sends nothing
    for rid in (run_id, parent_id, child_id):
        state = state_of(store, rid)
        assert state.status == RunStatus.CANCELLED and state.error == "stop" and state.waiting is None
    with pytest.raises(RunNotWaiting):
        engine.resume(child_id, wait_key=None, payload="too late", action="respond")


# -- producer operations -------------------------------------------------------------------------------

def test_explicit_run_ids_must_be_free(store):
    engine, stub = stub_engine(store)
    chain = registry.workflows.get_or_raise("chain")
    run_id = engine.create(chain, run_id=f"mine-{uuid.uuid4().hex[:8]}")
    stub.run_until_quiet(engine)
    before = store.ledger.list(run_id)
    with pytest.raises(RunAlreadyExists):
        engine.create(chain, run_id=run_id)
    assert store.ledger.list(run_id) == before and stub.pending == []


def test_resume_checks_the_wait_key_and_emit_reaches_every_waiting_run(store):
    engine, stub = stub_engine(store)
    ids = [engine.create(registry.workflows.get_or_raise("wait_event")) for _ in range(3)]
    stub.run_until_quiet(engine)
    with pytest.raises(WaitKeyMismatch):
        engine.resume(ids[0], wait_key="evt:other", payload={})
    assert engine.emit("evt:nobody", {}) == []
    assert sorted(engine.emit("evt:go", {"v": 7})) == sorted(ids)
    stub.run_until_quiet(engine)
    assert [state_of(store, rid).output["evt"] for rid in ids] == [{"v": 7}] * 3


def test_k_nodes_per_tick_run_in_one_message_with_the_same_result(store):
    run_id = f"k-{uuid.uuid4().hex[:8]}"
    rt = in_process()
    play_in_process(rt, "chain", run_id, {}, [])
    engine, stub = stub_engine(store, nodes_per_tick=16)
    state = play_stub(engine, stub, "chain", run_id, {}, [])
    assert comparable(state, store.ledger.list(run_id)) == comparable(rt.get_state(run_id), rt.get_ledger(run_id))
    assert [m.task for m in stub.sent] == ["abstractruntime.tick"]


# -- the stub itself ------------------------------------------------------------------------------------

def test_messages_are_recorded_in_order_with_their_task_queue_and_labels(store):
    engine, stub = stub_engine(store)
    run_id = engine.create(registry.workflows.get_or_raise("agent"))
    deliveries = stub.run_until_quiet(engine)
    # Each effect goes to its own queue, and re-enters the run through the next tick.
    assert [(m.seq, m.task, m.queue, m.node) for m in stub.sent] == [
        (1, "abstractruntime.tick", "ticks", "think"),
        (2, "abstractruntime.effect.llm", "llm", "think"),
        (3, "abstractruntime.tick", "ticks", "act"),
        (4, "abstractruntime.effect.tools", "tools", "act"),
        (5, "abstractruntime.tick", "ticks", "ask"),
    ]
    assert {m.workflow for m in stub.sent} == {"agent"}
    assert [d.message for d in deliveries] == stub.sent
    assert results(deliveries) == ["execute", "next", "execute", "next", "park"]
    # Task arguments as the Celery message carries them: (run, version, attempt, fencing token)
    # and (run, version, idempotency key, attempt, fencing token); each commit that asks for a
    # message grants the run's lease again, one more token each time.
    assert stub.sent[0].args == (run_id, 1, 1, 1)
    key = store.ledger.list(run_id)[0]["idempotency_key"]
    assert stub.sent[1].args == (run_id, 2, key, 1, 2)


def test_runs_are_served_first_in_first_out(store):
    engine, stub = stub_engine(store)
    chain = registry.workflows.get_or_raise("chain")
    a = engine.create(chain, run_id=f"a-{uuid.uuid4().hex[:6]}")
    b = engine.create(chain, run_id=f"b-{uuid.uuid4().hex[:6]}")
    deliveries = stub.drain(engine)
    # Two chains of five nodes take turns: each tick's follow-up queues behind the other run's.
    assert [d.message.run_id for d in deliveries] == [a, b] * 5
    assert results(deliveries) == ["next"] * 8 + ["finish"] * 2


def test_a_countdown_effect_retry_waits_for_the_stub_clock(store):
    # Given an LLM that fails its first attempt, and a 0.05 s backoff (celery_scenarios.POLICY)
    engine, stub = stub_engine(store)
    run_id = engine.create(registry.workflows.get_or_raise("llm_flaky"))
    assert results(stub.drain(engine)) == ["execute", "retry"]
    [retry] = stub.pending
    assert retry.task == "abstractruntime.effect.llm" and retry.args[3] == 2 and retry.countdown > 0
    assert state_of(store, run_id).status == RunStatus.RUNNING
    stub.advance(retry.countdown)
    assert results(stub.drain(engine)) == ["next", "finish"]
    assert state_of(store, run_id).output["llm"] == {"content": "olleh ykalf", "attempt": 2}


def test_a_run_that_never_rests_stops_the_drain_with_a_clear_error(store):
    own = Registry()

    def spin(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="spin", next_node="spin")

    wf = own.register_workflow(WorkflowSpec(workflow_id="spin", entry_node="spin", nodes={"spin": spin}))
    engine, stub = make_stub_engine(store, own)
    run_id = engine.create(wf)
    with pytest.raises(DrainLimitReached, match=r"delivered 50 messages and 1 more.*never waits or ends") as info:
        stub.run_until_quiet(engine, max_messages=50)
    assert info.value.delivered == 50 and [m.run_id for m in info.value.pending] == [run_id]
    # The next tick is still queued; once the run is cancelled it finds nothing to do.
    assert [s.run_id for s in engine.cancel(run_id)] == [run_id]
    assert results(stub.drain(engine)) == ["stale"]


def test_a_duplicate_message_is_harmless(store):
    engine, stub = stub_engine(store)
    run_id = engine.create(registry.workflows.get_or_raise("crashy"))
    # Given the first tick delivered twice (a broker's redelivery)
    stub.redeliver(stub.sent[0])
    deliveries = stub.run_until_quiet(engine)
    # Then one transition: the copy finds the run moved on
    assert results(deliveries)[:2] == ["next", "stale"]
    assert results(deliveries).count("stale") == 1
    # And every message ever sent, delivered again after the end, changes nothing.
    state, ledger = state_of(store, run_id).to_dict(), store.ledger.list(run_id)
    for message in list(stub.sent):
        stub.redeliver(message)
    assert set(results(stub.run_until_quiet(engine))) == {"stale"}
    assert state_of(store, run_id).to_dict() == state and store.ledger.list(run_id) == ledger
    # Exactly once: create, n0, n1, n2 (effect sent), effect landed, n3.
    assert int(store.client.hget(store.keys.run(run_id), "v")) == 6
    assert state["output"] == {"visited": 2, "llm": {"content": "olleh", "attempt": 1}}


def test_a_lost_message_is_sent_again_by_the_sweep_after_the_lease(store):
    engine, stub = stub_engine(store, tick_lease_s=0.3)
    run_id = engine.create(registry.workflows.get_or_raise("chain"))
    # Given the first tick lost (a crash between commit and dispatch)
    stub.drop(stub.pending[0])
    assert stub.run_until_quiet(engine) == [] and state_of(store, run_id).current_node == "n0"
    # Before the lease expires (by the Redis clock) the sweep sends nothing
    expires_ms = store.client.zscore(store.keys.leases(), run_id)
    swept = engine.sweep()["leases"]
    if store.time_ms() < expires_ms:  # checked after the sweep: a slow sweep may pass the expiry
        assert swept == 0
    if swept == 0:
        while store.time_ms() <= expires_ms:
            time.sleep(0.02)
        swept = engine.sweep()["leases"]
    assert swept == 1
    stub.run_until_quiet(engine)
    assert state_of(store, run_id).output == {"visited": 5}


def _until(store: RedisBackend, seconds: float) -> str:
    """A time ``seconds`` ahead of the Redis clock, as a WAIT_UNTIL takes it."""
    return datetime.fromtimestamp((store.time_ms() + seconds * 1000) / 1000, tz=timezone.utc).isoformat()


def _sleep_past(store: RedisBackend, until: str) -> None:
    """Sleep until the Redis clock has passed ``until`` (real time: the stub cannot move it)."""
    due_ms = datetime.fromisoformat(until).timestamp() * 1000
    while store.time_ms() <= due_ms:
        time.sleep(0.02)


def test_timers_are_due_by_the_redis_clock_not_the_stub_clock(store):
    engine, stub = stub_engine(store)
    until = _until(store, 0.3)
    run_id = engine.create(registry.workflows.get_or_raise("sleep_until"), vars={"until": until})
    assert results(stub.run_until_quiet(engine)) == ["park"]
    [wake] = stub.pending
    assert wake.task == "abstractruntime.wake" and wake.queue == "timers" and 0 < wake.countdown <= 0.3
    # Moving the stub clock makes the wake due for the stub, not the run for Redis: it comes back.
    stub.advance(1.0)
    assert results(stub.drain(engine)) == ["early"]
    assert state_of(store, run_id).status == RunStatus.WAITING and len(stub.pending) == 1
    # Once real time has passed, the queued wake wakes it.
    _sleep_past(store, until)
    assert results(stub.wake_due(engine)) == ["finish"]
    assert state_of(store, run_id).status == RunStatus.COMPLETED


def test_the_sweep_wakes_due_timers_like_beat(store):
    engine, stub = stub_engine(store)
    until = _until(store, 0.2)
    run_id = engine.create(registry.workflows.get_or_raise("sleep_until"), vars={"until": until})
    assert results(stub.run_until_quiet(engine)) == ["park"]
    _sleep_past(store, until)
    assert engine.sweep()["timers"] == 1
    assert results(stub.drain(engine)) == ["finish"]
    assert state_of(store, run_id).status == RunStatus.COMPLETED
    # The countdown's wake, still queued, finds the run ended.
    assert results(stub.wake_due(engine)) == ["stale"]


def test_drop_names_a_message_that_is_not_queued(store):
    engine, stub = stub_engine(store)
    engine.create(registry.workflows.get_or_raise("ask"))
    stub.run_until_quiet(engine)
    with pytest.raises(ValueError, match="is not queued"):
        stub.drop(stub.sent[0])
    with pytest.raises(ValueError, match="only moves forward"):
        stub.advance(-1)
    with pytest.raises(ValueError, match="before the stub clock"):
        stub.drain(engine, until=stub.now - 1)


# -- the user guide's example ----------------------------------------------------------------------------

def test_the_examples_in_docs_testing_md_run():
    # The first two blocks run on fakeredis, the second using what the first defined; the
    # last needs worker processes and is the pattern of the worker suites.
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 3, "docs/testing.md: the examples moved"
    namespace: dict[str, Any] = {"__name__": "docs_testing_example"}
    for block in blocks[:2]:
        exec(compile(block, str(DOCS), "exec"), namespace)


def test_a_client_drives_runs_through_the_stub(store):
    """``Client(dispatcher=stub)``: the producer API a user's code calls, with no broker at all."""
    from workers.client import Client

    stub = StubDispatcher()
    client = Client(WorkerSettings(), backend=store, dispatcher=stub)
    run_id = client.start("ask")
    stub.drain(client.engine)
    assert client.get_state(run_id).waiting.prompt == "Go?"
    client.respond(run_id, "y")
    stub.drain(client.engine)
    state = client.get_state(run_id)
    assert state.status == RunStatus.COMPLETED and state.output["answer"] == "y"
    assert client._app is None  # no Celery app was made
