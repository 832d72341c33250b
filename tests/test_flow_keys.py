"""Flow control's admission keys (issue 14 item 1): set at start, kept with the run, inherited
by a child, refused when malformed; and the rule contract every part of flow control shares."""

from __future__ import annotations

import pytest

from runtime import RunStatus
from workers.client import Client
from workers.flow import AdmissionKeys, InvalidLimitRule, LimitRule
from workers.flow.rules import FLOW_VARS, rule_applies
from workers.settings import WorkerSettings
from workers.testing import StubDispatcher

import support.celery_scenarios  # noqa: F401  (registers the workflows)


def client_on(store) -> tuple[Client, StubDispatcher]:
    stub = StubDispatcher()
    return Client(WorkerSettings(), backend=store, dispatcher=stub), stub


def test_keys_set_at_start_are_kept_with_the_run_and_a_child_inherits_tenant_and_user(store):
    client, stub = client_on(store)
    run_id = client.start("parent_sync", tenant="acme", user="u-7", agent="support")
    assert client.get_state(run_id).vars[FLOW_VARS] == {"tenant": "acme", "user": "u-7", "agent": "support"}
    stub.run_until_quiet(client.engine)
    state = client.get_state(run_id)
    assert state.status == RunStatus.COMPLETED
    child_id = state.output["child"]["sub_run_id"]
    # its agent is its own workflow (left unset: the path says agent:<workflow id>)
    assert client.get_state(child_id).vars[FLOW_VARS] == {"tenant": "acme", "user": "u-7"}
    assert AdmissionKeys.from_dict(client.get_state(child_id).vars[FLOW_VARS]).path("child") == \
        ["global", "tenant:acme", "user:u-7", "agent:child"]


def test_a_run_started_without_keys_carries_none(store):
    client, _stub = client_on(store)
    assert FLOW_VARS not in client.get_state(client.start("ask")).vars


@pytest.mark.parametrize("field,value", [("tenant", "a b"), ("user", "*"), ("agent", "x" * 101), ("tenant", 7)])
def test_a_malformed_key_is_refused_naming_it_and_nothing_is_stored(store, field, value):
    client, stub = client_on(store)
    before = client.count()
    with pytest.raises(InvalidLimitRule) as refused:
        client.start("ask", **{field: value})
    assert refused.value.field == field
    assert client.count() == before and stub.sent == []


@pytest.mark.parametrize("fields,named", [
    ({"key": "tenant:acme"}, "concurrency"),  # no limit at all
    ({"key": "tenant:acme", "concurrency": 0}, "concurrency"),
    ({"key": "tenant:acme", "concurrency": 2.5}, "concurrency"),
    ({"key": "tenant:acme", "rate": -1}, "rate"),
    ({"key": "tenant:acme", "rate": 5, "per_s": 0}, "per_s"),
    ({"key": "tenant:acme", "tokens": 1000, "window_s": 0}, "window_s"),
    ({"key": "tenant:acme", "burst": 3, "concurrency": 1}, "burst"),
    ({"key": "tenant:acme", "tokens": 10, "scope": "tool_calls"}, "scope"),
    ({"key": "team:acme", "concurrency": 1}, "key"),
    ({"key": "tenant:", "concurrency": 1}, "key"),
    ({"key": "tenant:acme", "concurrency": 1, "scope": "gpu"}, "scope"),
    ({"key": "tenant:acme", "concurrency": 1, "on_exhausted": "drop"}, "on_exhausted"),
    ({"key": "tenant:acme", "concurrency": 1, "colour": "red"}, "colour"),
])
def test_a_malformed_rule_names_its_field(fields, named):
    with pytest.raises(InvalidLimitRule) as refused:
        LimitRule.from_dict(fields)
    assert refused.value.field == named, refused.value


def test_rules_round_trip_and_scope():
    rule = LimitRule(key="tenant:*", name="llm", scope="model:gpt-4o", tokens=20_000, window_s=60)
    assert LimitRule.from_dict(rule.to_dict()) == rule and rule.is_pattern and rule.level == "tenant"
    assert rule_applies(rule, kind="llm_call", model="gpt-4o")
    assert not rule_applies(rule, kind="llm_call", model="other")
    assert not rule_applies(rule, kind="tool_calls", tools=("gpt-4o",))
    tool = LimitRule(key="global", scope="tool:search", rate=10)
    assert rule_applies(tool, kind="tool_calls", tools=("add", "search"))
    assert not rule_applies(tool, kind="run")
    starts = LimitRule(key="user:u-7", scope="run", concurrency=3)
    assert rule_applies(starts, kind="run") and not rule_applies(starts, kind="llm_call")
