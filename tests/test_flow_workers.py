"""Flow control on real Redis and real Celery worker processes (issue 14 acceptance).

3 tenants x 50 runs, each run one tool call that records when it starts and ends, on two
prefork workers of 3 processes each (6 effects could run at once), with at most 2 per tenant
and 4 in all: the recorded intervals never overlap more than that, and every share is given
back at the end.
"""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from runtime import RunStatus
from stores.redis.flowkeys import FlowKeys
from workers.flow import LimitRule
from workers.flow.resolve import registry as limits_of

from support.flow_scenarios import most_at_once


@pytest.mark.timeout(300)
def test_three_tenants_never_exceed_their_concurrency_nor_the_global_one(fresh, tmp_path):
    g = fresh(tick_backoff_s=0.05, effect_lease_s=10, flow_rules_cache_s=0.2,
              imports="support.celery_scenarios,support.flow_scenarios")
    client = g.client()
    limits = limits_of(client.backend)
    limits.set_rule(LimitRule(key="tenant:*", scope="tool_calls", concurrency=2))
    limits.set_rule(LimitRule(key="global", scope="tool_calls", concurrency=4))
    g.start_worker("a", pool="prefork", concurrency=3)
    g.start_worker("b", pool="prefork", concurrency=3)
    probe = tmp_path / "probe.jsonl"
    ids = [client.start("probed", vars={"probe": str(probe), "tenant": tenant, "seconds": 0.1}, tenant=tenant)
           for _ in range(50) for tenant in ("acme", "beta", "gamma")]
    for rid in ids:
        state = client.wait_for(rid, [RunStatus.COMPLETED, RunStatus.FAILED], timeout=240)
        assert state.status == RunStatus.COMPLETED, (rid, state.error)

    calls = [json.loads(line) for line in probe.read_text().splitlines()]
    assert len(calls) == len(ids)  # each tool ran once
    by_tenant: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for c in calls:
        by_tenant[c["tenant"]].append((c["start"], c["end"]))
    for tenant, intervals in by_tenant.items():
        assert most_at_once(intervals) <= 2, tenant
    overall = most_at_once([iv for intervals in by_tenant.values() for iv in intervals])
    assert overall <= 4
    assert overall >= 3, "the workers never ran effects side by side: the limits were not tested"
    assert "deferred by flow-control rule" in g.log("a") + g.log("b")
    assert client.backend.client.zcard(FlowKeys(client.backend.keys.prefix).holders()) == 0  # all given back
