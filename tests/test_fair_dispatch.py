"""Fair dispatch (issue 14, item 3): deferred run starts and effect attempts wait in a queue per
fairness key, by priority then arrival, and the dispatcher serves the keys by weighted round
robin; a run's start is admitted by ``Client.start`` / ``Engine.create``.

Stories through ``Engine`` and the stub dispatcher on real Redis and fakeredis (the real-worker
acceptance, 1,000 items against 10, is in ``tests/test_flow_acceptance.py``).
"""

from __future__ import annotations

from typing import Any

import pytest

from runtime import RunStatus
from stores.redis.flowkeys import FlowKeys
from stores.redis.flowqueue import FlowQueue
from workers.explain import Code
from workers.fleet import explain_run
from workers.flow import AdmissionKeys, BudgetExceeded, InvalidLimitRule, LimitRule
from workers.flow.resolve import registry as limits_of
from workers.registry import registry
from workers.testing import StubDispatcher

from support.flow_stub import engine_of

ONE_START = LimitRule(key="global", name="starts", scope="run", concurrency=1)


def start(engine: Any, tenant: str, *, priority: int | None = None, workflow: str = "tools",
          run_id: str | None = None) -> str:
    return engine.create(registry.workflows.get_or_raise(workflow), run_id=run_id,
                         flow=AdmissionKeys(tenant=tenant, priority=priority))


def first_ticks(stub: StubDispatcher) -> list[str]:
    """Run ids in the order their first tick was sent (what a run's start is)."""
    seen: list[str] = []
    for m in stub.sent:
        if m.kind == "tick" and m.run_id not in seen:
            seen.append(m.run_id)
    return seen


def test_starts_of_two_tenants_are_served_in_turn_and_priority_goes_first(store):
    engine, stub = engine_of(store)
    limits_of(store).set_rule(ONE_START)  # one start in flight: each first tick lets the next one go
    a = [start(engine, "a") for _ in range(4)]
    b = [start(engine, "b") for _ in range(2)]
    urgent = start(engine, "a", priority=1)  # came last, but first among tenant a's
    assert first_ticks(stub) == [a[0]]  # the rest is parked, not sent
    assert engine.fair.queue.depth("tenant:a") == 4 and engine.fair.queue.depth("tenant:b") == 2
    stub.run_until_quiet(engine)
    assert first_ticks(stub) == [a[0], urgent, b[0], a[1], b[1], a[2], a[3]]
    assert all(store.runs.load(r).status == RunStatus.COMPLETED for r in [*a, *b, urgent])
    assert engine.fair.queue.queued() == 0 and store.client.zcard(engine.flow.keys.holders()) == 0


def test_tool_calls_of_two_tenants_take_turns_and_a_deferred_one_never_reaches_the_broker(store):
    engine, stub = engine_of(store)
    limits_of(store).set_rule(LimitRule(key="global", name="tools", scope="tool_calls", concurrency=1))
    a = [start(engine, "a") for _ in range(4)]
    b = [start(engine, "b") for _ in range(2)]
    stub.run_until_quiet(engine)
    # one effect message each, in turns: the parked ones were sent once, by the dispatcher, never
    # sent to be deferred by their task
    effects = [m.run_id for m in stub.sent if m.kind == "effect"]
    assert effects == [a[0], a[1], b[0], a[2], b[1], a[3]]
    assert all(store.runs.load(r).status == RunStatus.COMPLETED for r in [*a, *b])


def test_a_heavier_weight_is_served_more_often(store):
    engine, stub = engine_of(store)
    limits = limits_of(store)
    limits.set_rule(ONE_START)
    limits.set_rule(LimitRule(key="tenant:a", concurrency=1000, weight=2))  # the weight is what counts here
    a = [start(engine, "a") for _ in range(6)]
    b = [start(engine, "b") for _ in range(3)]
    stub.run_until_quiet(engine)
    order = "".join("a" if r in a else "b" if r in b else "?" for r in first_ticks(stub))
    assert order == "aabaabaab", order


def test_a_start_a_rule_refuses_raises_and_stores_nothing(store):
    engine, _stub = engine_of(store)
    limits_of(store).set_rule(LimitRule(key="tenant:a", scope="run", rate=1, per_s=3600, on_exhausted="fail"))
    start(engine, "a")
    with pytest.raises(BudgetExceeded, match=r"tenant:a/run rate"):
        start(engine, "a", run_id="refused-run")
    assert store.runs.load("refused-run") is None
    assert engine.fair.queue.queued() == 0


def test_a_bad_priority_is_refused_by_name():
    with pytest.raises(InvalidLimitRule, match="priority"):
        AdmissionKeys(tenant="a", priority=7)
    assert AdmissionKeys.from_dict({"tenant": "a", "priority": "high"}).priority is None  # stored: the default


def test_the_sweep_keeps_a_parked_run_rather_than_sending_it_again(store):
    engine, stub = engine_of(store, tick_lease_s=0.05, poison_after=2, sweep_period_s=0.05)
    limits_of(store).set_rule(ONE_START)
    held = [("global|run|starts", ONE_START)]
    assert engine.flow.admission.acquire("elsewhere/start", held, lease_ms=600_000).admitted
    run_id = start(engine, "a")
    assert first_ticks(stub) == []
    for _ in range(4):  # leases run out again and again: more than poison_after
        deadline = store.time_ms() + 60
        while store.time_ms() < deadline:
            pass
        counts = engine.sweep()
        assert counts.get("parked") == 1 and counts.get("poisoned") == 0, counts
    assert first_ticks(stub) == [] and store.runs.load(run_id).status == RunStatus.RUNNING
    d = explain_run(store, engine.settings, run_id)
    assert d.code is Code.ADMISSION_DEFERRED, d
    assert d.sentence.startswith("deferred by rule `global/run starts`: 1 holder of 1, next slot when run "
                                 "elsewhere's start ends"), d.sentence
    assert d.sentence.endswith("1st of 1 in the queue of `tenant:a`"), d.sentence

    engine.flow.admission.release("elsewhere/start")
    assert engine.flow_dispatch() == 1
    stub.run_until_quiet(engine)
    assert store.runs.load(run_id).status == RunStatus.COMPLETED


def test_a_start_behind_queued_work_waits_its_turn_and_explain_says_where(store):
    engine, _stub = engine_of(store)
    limits_of(store).set_rule(ONE_START)
    start(engine, "a")
    start(engine, "a")  # deferred by the rule
    third = start(engine, "a")  # queued behind it
    d = explain_run(store, engine.settings, third)
    assert d.code is Code.ADMISSION_DEFERRED, d
    assert "2nd of 2 in the queue of `tenant:a`" in d.sentence, d.sentence


def test_a_cancelled_parked_run_is_dropped_from_its_queue(store):
    engine, stub = engine_of(store)
    limits_of(store).set_rule(ONE_START)
    first = start(engine, "a")
    parked = start(engine, "a")
    engine.cancel(parked, reason="not needed", actor="test")
    stub.run_until_quiet(engine)
    assert store.runs.load(first).status == RunStatus.COMPLETED
    assert store.runs.load(parked).status == RunStatus.CANCELLED
    assert first_ticks(stub) == [first]
    assert engine.fair.queue.queued() == 0 and store.client.zcard(engine.flow.keys.holders()) == 0


# -- the queue itself ------------------------------------------------------------------------------


def test_parking_again_keeps_the_place_and_priority_orders_the_queue(store):
    q = FlowQueue(store.client, FlowKeys(store.keys.prefix))
    assert q.park("x", "tenant:a", {"n": 1}) is True
    assert q.park("y", "tenant:a", {"n": 2}) is True
    assert q.park("x", "tenant:a", {"n": 3}) is False  # again: same place, item updated
    assert q.park("z", "tenant:a", {"n": 4}, priority=1) is True
    assert q.head("tenant:a") == ("z", {"n": 4})
    assert q.take("tenant:a", "z", weight=1) == 2
    assert q.head("tenant:a") == ("x", {"n": 3})
    assert q.position("tenant:a", "y") == 1
    with pytest.raises(ValueError, match="priority"):
        q.park("w", "tenant:a", {}, priority=0)
    q.take("tenant:a", "x")
    q.take("tenant:a", "y")
    assert q.queued() == 0 and not q.is_parked("y")


def test_a_key_back_from_idle_gets_no_credit_for_the_time_it_was_empty(store):
    q = FlowQueue(store.client, FlowKeys(store.keys.prefix))
    for i in range(3):  # tenant a is served three times while b has nothing queued
        q.park(f"a{i}", "tenant:a", {})
        q.take("tenant:a", f"a{i}", weight=1)
    q.park("a3", "tenant:a", {})
    q.park("b0", "tenant:b", {})
    now = store.time_ms()
    # b starts at the pass last served (a's third, 2.0), not at 0: it goes next, once, then they alternate
    assert q.ready(now) == [("tenant:b", 2.0), ("tenant:a", 3.0)]


def test_one_dispatcher_pass_at_a_time(store):
    q = FlowQueue(store.client, FlowKeys(store.keys.prefix))
    with q.lock(10_000) as first:
        with q.lock(10_000) as second:
            assert first is True and second is False
    with q.lock(10_000) as again:
        assert again is True


def test_parking_and_a_blocked_pass_cost_the_same_with_twenty_tenants_waiting(redis_server):
    """A park tries its own key only, and a pass stops trying keys whose head a rule already found
    full: neither grows with the number of tenants that wait (counted in Redis's commandstats)."""
    from stores.redis import RedisBackend

    from support.backends import fresh_prefix

    store = RedisBackend(redis_server.client(), prefix=fresh_prefix("fd"))
    engine, _stub = engine_of(store)
    limits_of(store).set_rule(ONE_START)
    engine.flow.admission.acquire("elsewhere/start", [("global|run|starts", ONE_START)], lease_ms=600_000)
    for i in range(20):
        start(engine, f"t{i}")
    assert engine.fair.queue.queued() == 20

    def scripts_run(call: Any) -> int:
        def evalsha() -> int:
            return int(store.client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
        before = evalsha()
        call()
        return evalsha() - before

    # a park: the run's commit, its admission, the park, the unlock; one head read and one admission of its key
    assert scripts_run(lambda: start(engine, "late")) <= 7
    # a pass over 21 ready keys, every head held back by the same full rule: one admission, then heads only
    # (21 head reads, one admission, the unlock: trying every head would be 21 admissions more)
    assert scripts_run(engine.flow_dispatch) <= 21 + 3
