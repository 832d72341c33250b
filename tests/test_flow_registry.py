"""The flow-control registry (issue 14): rules and prices in Redis, and which rules count an admission.

The registry runs on the session's redis-server and on fakeredis (the ``store`` fixture: a
``RedisBackend`` under a fresh prefix); resolution and the cache are pure functions of the rules.
"""

from __future__ import annotations

import json

import pytest

from runtime.errors import CorruptRecordError
from stores.redis.flowkeys import FlowKeys
from stores.redis.limits import InvalidPrice, Price, UnknownModelPrice
from workers.flow.resolve import Resolver, applicable, registry, resolver_for, rules_for_key
from workers.flow.rules import AdmissionKeys, InvalidLimitRule, LimitRule
from workers.settings import WorkerSettings

PATH = AdmissionKeys(tenant="acme", user="u-7", agent="support").path("wf")


def ids(found):
    return [rid for rid, _ in found]


# -- the registry in Redis ---------------------------------------------------------------------------


def test_rules_round_trip_and_replace_by_id(store):
    reg = registry(store)
    # Given two rules on one key (different names) and one pattern rule
    a = LimitRule("tenant:acme", concurrency=2)
    b = LimitRule("tenant:acme", name="llm-budget", scope="llm_call", tokens=20_000, window_s=60, on_exhausted="fail")
    p = LimitRule("tenant:*", rate=10, per_s=1, burst=5, weight=3)
    assert [reg.set_rule(r) for r in (a, b, p)] == ["tenant:acme|*|limit", "tenant:acme|llm_call|llm-budget",
                                                     "tenant:*|*|limit"]
    # I expect them back, equal, from another process's view of the same prefix
    again = registry(type(store)(store.client, prefix=store.keys.prefix))
    assert sorted(again.rules(), key=repr) == sorted([a, b, p], key=repr)
    # If the same key, scope and name is set again, it replaces the rule (not merged)
    reg.set_rule(LimitRule("tenant:acme", rate=1))
    assert reg.rule("tenant:acme|*|limit") == LimitRule("tenant:acme", rate=1)
    assert len(reg.rules()) == 3
    # A rule as its JSON object is validated the same way
    assert reg.set_rule({"key": "global", "concurrency": 4}) == "global|*|limit"
    assert reg.delete_rule("global|*|limit") is True and reg.delete_rule("global|*|limit") is False
    assert reg.rule("global|*|limit") is None
    # The stored form is JSON, in the hash FlowKeys names
    raw = store.client.hget(FlowKeys(store.keys.prefix).limits(), "tenant:*|*|limit")
    assert json.loads(raw) == p.to_dict()


BAD_RULES = [
    ({"key": "tenant"}, "key"),
    ({"key": "team:acme"}, "key"),
    ({"key": "tenant:a b"}, "key"),
    ({"key": 7}, "key"),
    ({"key": "tenant:acme", "concurrency": -1}, "concurrency"),
    ({"key": "tenant:acme", "concurrency": 0}, "concurrency"),
    ({"key": "tenant:acme", "concurrency": 1.5}, "concurrency"),
    ({"key": "tenant:acme", "concurrency": True}, "concurrency"),
    ({"key": "tenant:acme", "rate": -2}, "rate"),
    ({"key": "tenant:acme", "rate": float("inf")}, "rate"),
    ({"key": "tenant:acme", "rate": 1, "per_s": 0}, "per_s"),
    ({"key": "tenant:acme", "rate": 1, "burst": -1}, "burst"),
    ({"key": "tenant:acme", "concurrency": 1, "burst": 2}, "burst"),
    ({"key": "tenant:acme", "tokens": 0}, "tokens"),
    ({"key": "tenant:acme", "tokens": 10, "window_s": 0}, "window_s"),
    ({"key": "tenant:acme", "cost_usd": -0.5}, "cost_usd"),
    ({"key": "tenant:acme", "concurrency": 1, "weight": 0}, "weight"),
    ({"key": "tenant:acme", "concurrency": 1, "on_exhausted": "drop"}, "on_exhausted"),
    ({"key": "tenant:acme", "concurrency": 1, "scope": "llm"}, "scope"),
    ({"key": "tenant:acme", "tokens": 10, "scope": "tool:search"}, "scope"),
    ({"key": "tenant:acme", "concurrency": 1, "name": "a b"}, "name"),
    ({"key": "tenant:acme"}, "concurrency"),  # no limit at all
    ({"key": "tenant:acme", "concurrency": 1, "limit": 3}, "limit"),  # unknown field
    ({"concurrency": 1}, "key"),
]


@pytest.mark.parametrize("data, field", BAD_RULES, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_RULES)])
def test_a_malformed_rule_is_refused_naming_its_field_and_nothing_is_written(store, data, field):
    reg = registry(store)
    with pytest.raises(InvalidLimitRule) as info:
        reg.set_rule(data)
    assert info.value.field == field and field in str(info.value)
    assert reg.rules() == [] and not store.client.exists(reg.keys.limits())


def test_a_rule_corrupted_in_redis_is_named_when_read(store):
    reg = registry(store)
    reg.set_rule(LimitRule("tenant:acme", concurrency=2))
    store.client.hset(reg.keys.limits(), "tenant:beta|*|limit", '{"key": "tenant:beta", "concurrency": -3}')
    with pytest.raises(CorruptRecordError) as info:
        reg.rules()
    assert "tenant:beta|*|limit" in str(info.value) and "concurrency" in str(info.value)
    # A rule stored under an id that is not its own is corrupt too; deleting needs no decoding
    store.client.hset(reg.keys.limits(), "tenant:beta|*|limit", json.dumps(LimitRule("tenant:x", rate=1).to_dict()))
    with pytest.raises(CorruptRecordError, match="tenant:x"):
        reg.rules()
    assert reg.delete_rule("tenant:beta|*|limit") is True
    assert reg.rules() == [LimitRule("tenant:acme", concurrency=2)]


# -- the price table ---------------------------------------------------------------------------------


def test_prices_round_trip_and_cost(store):
    reg = registry(store)
    assert reg.prices() == {}
    reg.set_price("gpt-4o", 2.5, 10)
    reg.set_price("local/qwen3:4b", 0, 0)  # a free local model is a price too
    assert reg.prices() == {"gpt-4o": Price(2.5, 10), "local/qwen3:4b": Price(0, 0)}
    assert reg.price_of("gpt-4o") == Price(2.5, 10)
    # 1M in at $2.5 and 100k out at $10/M
    assert reg.cost_usd("gpt-4o", 1_000_000, 100_000) == pytest.approx(3.5)
    reg.set_price("gpt-4o", 5, 15)  # replaced
    assert reg.cost_usd("gpt-4o", 1000, 1000) == pytest.approx(0.02)
    assert reg.delete_price("gpt-4o") is True and reg.delete_price("gpt-4o") is False


def test_an_unknown_model_is_priced_as_star_else_refused_naming_it(store):
    reg = registry(store)
    reg.set_price("gpt-4o", 2.5, 10)
    # Given no `*` price, I expect a typed error naming the model
    with pytest.raises(UnknownModelPrice) as info:
        reg.cost_usd("mystery-1", 10, 10)
    assert info.value.model == "mystery-1" and "mystery-1" in str(info.value) and isinstance(info.value, KeyError)
    # If `*` is set, every model not listed costs that
    reg.set_price("*", 1, 2)
    assert reg.price_of("mystery-1") == Price(1, 2)
    assert reg.cost_usd("mystery-1", 1_000_000, 1_000_000) == pytest.approx(3.0)
    assert reg.price_of("gpt-4o") == Price(2.5, 10)  # a listed model keeps its own


@pytest.mark.parametrize("args, field", [
    (("gpt", -1, 1), "input_usd_per_mtok"),
    (("gpt", 1, float("nan")), "output_usd_per_mtok"),
    (("gpt", "1", 1), "input_usd_per_mtok"),
    (("", 1, 1), "model"),
    (("a model", 1, 1), "model"),
])
def test_a_malformed_price_is_refused_and_nothing_is_written(store, args, field):
    reg = registry(store)
    with pytest.raises(InvalidPrice) as info:
        reg.set_price(*args)
    assert info.value.field == field
    assert reg.prices() == {}
    with pytest.raises(InvalidPrice, match="input_tokens"):
        Price(1, 1).cost_usd(-1, 0)


def test_a_price_corrupted_in_redis_is_named(store):
    reg = registry(store)
    store.client.hset(reg.keys.prices(), "gpt", '{"input_usd_per_mtok": 1}')
    with pytest.raises(CorruptRecordError, match="output_usd_per_mtok"):
        reg.price_of("gpt")


# -- which rules count an admission ---------------------------------------------------------------


def test_pattern_rules_expand_to_the_concrete_key_and_an_exact_rule_overrides():
    rules = [
        LimitRule("global", concurrency=100),
        LimitRule("tenant:*", concurrency=2),
        LimitRule("tenant:*", name="tok", tokens=1000),
        LimitRule("tenant:acme", concurrency=5),  # overrides tenant:*|*|limit for acme only
        LimitRule("tenant:beta", concurrency=9),
        LimitRule("user:u-7", rate=1),
        LimitRule("agent:*", concurrency=1),
    ]
    found = applicable(rules, PATH, "llm_call", model="gpt-4o")
    assert ids(found) == ["global|*|limit", "tenant:acme|*|limit", "tenant:acme|*|tok", "user:u-7|*|limit",
                          "agent:support|*|limit"]
    by_id = dict(found)
    assert by_id["tenant:acme|*|limit"].concurrency == 5  # the exact rule, not the pattern's 2
    # The pattern's other rule is acme's own copy, naming acme
    assert by_id["tenant:acme|*|tok"] == LimitRule("tenant:acme", name="tok", tokens=1000)
    assert by_id["tenant:acme|*|tok"].label == "tenant:acme tok"
    # Another tenant counts apart under the same pattern
    other = AdmissionKeys(tenant="gamma").path("wf")
    assert ids(applicable(rules, other, "run")) == ["global|*|limit", "tenant:gamma|*|limit", "tenant:gamma|*|tok",
                                                     "agent:wf|*|limit"]


def test_an_unknown_key_gets_its_pattern_else_only_global():
    rules = [LimitRule("global", concurrency=4), LimitRule("tenant:acme", concurrency=2)]
    # No rule for tenant:zeta and no tenant:* pattern: only the global rule counts it
    assert ids(applicable(rules, AdmissionKeys(tenant="zeta").path("wf"), "run")) == ["global|*|limit"]
    # With a pattern, the pattern is the default rule of the level
    rules.append(LimitRule("tenant:*", concurrency=1))
    assert ids(applicable(rules, AdmissionKeys(tenant="zeta").path("wf"), "run")) == ["global|*|limit",
                                                                                      "tenant:zeta|*|limit"]
    # A path without global still gets the global rules
    assert ids(applicable(rules, ["tenant:zeta"], "run")) == ["global|*|limit", "tenant:zeta|*|limit"]


def test_rules_count_only_the_admissions_of_their_scope():
    rules = [
        LimitRule("tenant:*", name="starts", scope="run", rate=5),
        LimitRule("tenant:*", name="llm", scope="llm_call", tokens=100),
        LimitRule("tenant:*", name="gpt", scope="model:gpt-4o", cost_usd=1.0),
        LimitRule("tenant:*", name="tools", scope="tool_calls", concurrency=3),
        LimitRule("tenant:*", name="search", scope="tool:search", rate=1),
        LimitRule("tenant:*", name="subs", scope="start_subworkflow", concurrency=2),
        LimitRule("tenant:*", name="all", concurrency=10),
    ]
    path = AdmissionKeys(tenant="acme").path("wf")

    def names(kind, **kw):
        return sorted(rule.name for _, rule in applicable(rules, path, kind, **kw))

    assert names("run") == ["all", "starts"]
    assert names("llm_call", model="gpt-4o") == ["all", "gpt", "llm"]
    assert names("llm_call", model="claude") == ["all", "llm"]
    assert names("tool_calls", tools=("search", "fetch")) == ["all", "search", "tools"]
    assert names("tool_calls", tools=("fetch",)) == ["all", "tools"]
    assert names("start_subworkflow") == ["all", "subs"]


def test_rules_for_key_lists_own_then_pattern_rules_of_every_scope():
    rules = [LimitRule("tenant:*", concurrency=2), LimitRule("tenant:*", name="tok", tokens=10),
             LimitRule("tenant:acme", concurrency=5)]
    assert ids(rules_for_key(rules, "tenant:acme")) == ["tenant:acme|*|limit", "tenant:acme|*|tok"]
    assert ids(rules_for_key(rules, "tenant:*")) == ["tenant:*|*|limit", "tenant:*|*|tok"]
    assert rules_for_key(rules, "global") == []
    with pytest.raises(InvalidLimitRule):
        rules_for_key(rules, "nope")


def test_the_registry_is_read_at_most_once_per_cache_period():
    reads = []
    now = [100.0]
    state = [LimitRule("global", concurrency=1)]

    def read():
        reads.append(now[0])
        return list(state)

    resolver = Resolver(read, cache_s=1.0, clock=lambda: now[0])
    assert ids(resolver.applicable(["global"], "run")) == ["global|*|limit"]
    state[:] = [LimitRule("global", concurrency=1), LimitRule("global", name="b", rate=1)]
    now[0] += 0.5
    assert len(resolver.applicable(["global"], "run")) == 1 and reads == [100.0]  # cached
    now[0] += 0.5
    assert len(resolver.applicable(["global"], "run")) == 2 and reads == [100.0, 101.0]  # read again
    resolver.invalidate()
    resolver.rules()
    assert len(reads) == 3
    # 0: read at every admission
    uncached = Resolver(read, cache_s=0, clock=lambda: now[0])
    uncached.rules()
    uncached.rules()
    assert len(reads) == 5


def test_one_resolver_per_backend_reads_the_registry(store):
    registry(store).set_rule(LimitRule("tenant:*", concurrency=2))
    resolver = resolver_for(store, 1.0)
    assert resolver_for(store, 1.0) is resolver
    assert ids(resolver.applicable(AdmissionKeys(tenant="acme").path("wf"), "run")) == ["tenant:acme|*|limit"]
    assert WorkerSettings().flow_rules_cache_s == 1.0
    assert WorkerSettings.from_env({"ABSTRACTRUNTIME_FLOW_RULES_CACHE_S": "0"}).flow_rules_cache_s == 0
    with pytest.raises(ValueError, match="flow_rules_cache_s"):
        WorkerSettings(flow_rules_cache_s=-1)
