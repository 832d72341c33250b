"""Flow control in the engine (issue 14): an effect attempt is admitted when its task starts;
a rule that is full defers it (the task comes back when the rule can admit it, ``explain``
says why), a ``fail`` rule fails it for good, its share is given back after its commit, and
the sweep reclaims the share of an attempt whose worker died.

Stories through ``Engine`` and the stub dispatcher on real Redis and fakeredis.
"""

from __future__ import annotations

from typing import Any

from runtime import RunStatus
from stores.redis.admission import Verdict
from workers.explain import Code
from workers.fleet import explain_run
from workers.flow import LimitRule
from workers.flow.resolve import registry as limits_of
from workers.registry import registry

from support.flow_stub import engine_of


def start(engine: Any, workflow_id: str, tenant: str) -> str:
    from workers.flow import AdmissionKeys

    return engine.create(registry.workflows.get_or_raise(workflow_id), flow=AdmissionKeys(tenant=tenant))


def results(deliveries: list[Any]) -> list[str]:
    return [d.result for d in deliveries]


def test_without_rules_nothing_changes(store):
    engine, stub = engine_of(store)
    run_id = start(engine, "tools", "acme")
    assert "deferred" not in results(stub.run_until_quiet(engine))
    assert store.runs.load(run_id).status == RunStatus.COMPLETED
    assert store.client.zcard(engine.flow.keys.holders()) == 0


def test_a_full_concurrency_rule_defers_the_effect_until_a_slot_is_given_back(store):
    engine, stub = engine_of(store)
    limits_of(store).set_rule(LimitRule(key="tenant:*", scope="tool_calls", concurrency=1))
    # another attempt of tenant acme holds the only slot
    rule = [("tenant:acme|tool_calls|limit", LimitRule(key="tenant:acme", scope="tool_calls", concurrency=1))]
    assert engine.flow.admission.acquire("other/k/1", rule, lease_ms=60_000).verdict is Verdict.ADMITTED

    run_id = start(engine, "tools", "acme")
    other_tenant = start(engine, "tools", "beta")  # a tenant of its own: not held back
    delivered = results(stub.drain(engine))
    assert delivered.count("deferred") == 1 and store.runs.load(other_tenant).status == RunStatus.COMPLETED
    # parked in its tenant's queue: no message comes back by itself (no polling)
    assert [m for m in stub.pending if m.run_id == run_id] == []
    assert engine.fair.queue.depth("tenant:acme") == 1
    d = explain_run(store, engine.settings, run_id)
    assert d.code is Code.ADMISSION_DEFERRED, d
    assert d.sentence.startswith("deferred by rule `tenant:acme/tool_calls concurrency`: 1 holder of 1"), d.sentence
    # a pass while the slot is still held sends nothing, and nothing ran
    assert engine.flow_dispatch() == 0
    assert store.ledger.list(run_id)[-1]["status"] == "started"

    engine.flow.admission.release("other/k/1")
    assert engine.flow_dispatch() == 1  # the pass a release runs (this release was made by hand)
    assert results(stub.drain(engine)) == ["next"]  # (and its task ran the next tick, which finished)
    assert engine.fair.queue.depth("tenant:acme") == 0 and engine.fair.queue.queued() == 0
    assert store.runs.load(run_id).status == RunStatus.COMPLETED
    assert store.client.zcard(engine.flow.admission.keys.slots("tenant:acme|tool_calls|limit")) == 0  # given back
    assert store.client.hget(store.keys.run(run_id), "a") is None  # the commit cleared why it waited
    assert store.ledger.verify(run_id)["ok"]


def test_a_token_budget_defers_until_its_window_ends(store):
    engine, stub = engine_of(store, flow_llm_estimate_tokens=1000)
    limits_of(store).set_rule(LimitRule(key="tenant:acme", scope="llm_call", tokens=1500, window_s=60))
    first, second = start(engine, "llm", "acme"), start(engine, "llm", "acme")
    delivered = results(stub.drain(engine))
    assert delivered.count("deferred") == 1, delivered
    assert store.runs.load(first).status == RunStatus.COMPLETED
    d = explain_run(store, engine.settings, second)
    assert d.code is Code.BUDGET_EXHAUSTED, d
    assert d.sentence.startswith("budget `tenant:acme/llm_call tokens` has no tokens left this window; refills ")
    assert [m for m in stub.pending if m.run_id == second] == []  # parked, not polling
    [wake] = [m for m in stub.pending if m.kind == "flow"]
    assert 1 < wake.countdown <= 60  # one pass at the window's end


def test_a_fail_rule_fails_the_attempt_for_good(store):
    engine, stub = engine_of(store)
    limits_of(store).set_rule(LimitRule(key="tenant:acme", scope="tool_calls", concurrency=1, on_exhausted="fail"))
    rule = [("tenant:acme|tool_calls|limit", LimitRule(key="tenant:acme", scope="tool_calls", concurrency=1))]
    engine.flow.admission.acquire("other/k/1", rule, lease_ms=60_000)
    run_id = start(engine, "tools", "acme")
    stub.run_until_quiet(engine)
    state = store.runs.load(run_id)
    assert state.status == RunStatus.FAILED, state
    assert "refused by flow-control rule `tenant:acme/tool_calls concurrency`: concurrency exhausted" in state.error
    failed = [r for r in store.ledger.list(run_id) if r["status"] == "failed"]
    assert len(failed) == 1  # no retry


def test_the_sweep_reclaims_the_share_of_an_attempt_whose_worker_died(store):
    engine, stub = engine_of(store, effect_lease_s=0.2)
    limits_of(store).set_rule(LimitRule(key="global", scope="tool_calls", concurrency=5))
    rule = [("global|tool_calls|limit", LimitRule(key="global", scope="tool_calls", concurrency=5))]
    assert engine.flow.admission.acquire("dead/k/1", rule, lease_ms=200).admitted  # then its worker died
    deadline = store.time_ms() + 250
    while store.time_ms() < deadline:
        pass
    assert engine.sweep()["slots_reclaimed"] == 1
    assert store.client.zcard(engine.flow.admission.keys.slots("global|tool_calls|limit")) == 0


def flow_events(store: Any) -> list[dict[str, str]]:
    out = []
    for _id, fields in store.client.xrange(store.keys.events()):
        f = {k.decode(): v.decode() for k, v in fields.items()}
        if f.get("event", "").startswith(("admission.", "budget.")):
            out.append(f)
    return out


def test_a_budget_settles_with_the_real_usage_and_says_when_it_runs_low_or_out(store):
    """An LLM that reports 800 tokens a call against 1,000 a minute (estimate 200): the first
    call's settlement leaves the budget at 80 % (one warning), the second is admitted on its
    estimate and overshoots, the third waits for the window."""
    from runtime import Effect, EffectType
    from runtime.models import EffectOutcome
    from workers.flow import AdmissionKeys
    from workers.registry import Registry

    from support.scenarios import one_effect

    reg = Registry()
    reg.register_workflow(one_effect(Effect(type=EffectType.LLM_CALL, payload={"prompt": "hi", "model": "m1"},
                                            result_key="llm"), workflow_id="llm_usage"))
    reg.register_effect_handler(EffectType.LLM_CALL, lambda run, effect: EffectOutcome.completed(
        {"content": "ok", "model": "m1", "usage": {"prompt_tokens": 500, "completion_tokens": 300}}))
    engine, stub = engine_of(store, reg, flow_llm_estimate_tokens=200)
    rule = LimitRule(key="tenant:acme", scope="llm_call", tokens=1000, window_s=60)
    limits_of(store).set_rule(rule)
    limits_of(store).set_price("m1", 1.0, 2.0)  # dollars per million input / output tokens
    wf = reg.workflows.get_or_raise("llm_usage")
    runs = []
    for n in range(3):  # one after the other: each admitted once the one before settled
        runs.append(engine.create(wf, flow=AdmissionKeys(tenant="acme")))
        stub.drain(engine)
        assert n == 2 or store.runs.load(runs[-1]).status == RunStatus.COMPLETED
    assert explain_run(store, engine.settings, runs[2]).code is Code.BUDGET_EXHAUSTED
    usage = engine.flow.admission.usage("tenant:acme|llm_call|limit", rule)["budget"]
    assert usage["tokens_spent"] == 1600 and usage["open_reservations"] == 0  # settled: 800 + 800
    # the cost is on the step's record and summed in the run: 500 x 1 + 300 x 2 per million
    [done] = [r for r in store.ledger.list(runs[0]) if r["status"] == "completed" and r["idempotency_key"]]
    assert done["result"]["cost_usd"] == 0.0011
    assert store.runs.load(runs[0]).vars["_flow"] == {"tenant": "acme", "cost_usd": 0.0011}
    events = [(e["event"], e["run_id"]) for e in flow_events(store)]
    assert events == [("budget.warning", runs[0]), ("admission.deferred", runs[2]), ("budget.exceeded", runs[2])]
