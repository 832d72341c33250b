"""``abstractruntime limits`` and ``abstractruntime prices``, run as a user runs them, on real Redis.

Each command runs in a subprocess against the session's redis-server under a prefix of the
test's own (no worker is needed: the commands only read and write the registry). A bad input
must give one ``error:`` line naming the option, exit 2, and leave Redis as it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stores.redis import RedisBackend
from stores.redis.admission import Admission
from stores.redis.flowkeys import FlowKeys
from workers.flow.resolve import applicable, registry
from workers.flow.rules import AdmissionKeys, LimitRule

from support.backends import fresh_prefix
from support.cli import ok, refused

pytestmark = pytest.mark.timeout(120)

CLI = str(Path(sys.executable).with_name("abstractruntime"))


class Deployment:
    """A prefix of the session's Redis, and the CLI pointed at it."""

    def __init__(self, server) -> None:
        self.prefix = fresh_prefix("fl")
        self.url = server.url
        self.client = server.client()
        self.backend = RedisBackend(self.client, prefix=self.prefix)
        self.registry = registry(self.backend)
        self.keys = FlowKeys(self.prefix)

    def run(self, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_")}
        env.update(ABSTRACTRUNTIME_REDIS_URL=self.url, ABSTRACTRUNTIME_REDIS_PREFIX=self.prefix, **extra_env)
        return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=60)

    def flow_state(self) -> dict:
        """Every flow key of the prefix and its content: what a refused command must not change."""
        out = {}
        for key in sorted(self.client.scan_iter(match=f"{self.prefix}:*")):
            kind = self.client.type(key).decode()
            out[key] = self.client.hgetall(key) if kind == "hash" else kind
        return out


@pytest.fixture
def dep(redis_server):
    return Deployment(redis_server)


def test_set_show_delete_round_trip(dep):
    # Given a pattern rule for every tenant and an exact one for acme
    made = ok(dep.run("--json", "limits", "set", "tenant:*", "--concurrency", "2", "--rate", "10", "--per", "1s",
                      "--burst", "5", "--weight", "3"))
    assert made["rule_id"] == "tenant:*|*|limit" and made["concurrency"] == 2 and made["burst"] == 5
    ok(dep.run("limits", "set", "tenant:acme", "--name", "llm", "--scope", "llm_call", "--tokens", "20000",
               "--window", "1m", "--cost-usd", "5", "--on-exhausted", "fail", "--json"))
    # I expect them in the registry as the API reads it
    assert sorted(dep.registry.rules(), key=repr) == sorted([
        LimitRule("tenant:*", concurrency=2, rate=10, per_s=1, burst=5, weight=3),
        LimitRule("tenant:acme", name="llm", scope="llm_call", tokens=20000, cost_usd=5, window_s=60,
                  on_exhausted="fail")], key=repr)
    # show: all, or what one key carries (its own, and its pattern's marked)
    assert {r["rule_id"] for r in ok(dep.run("--json", "limits", "show"))} == {"tenant:*|*|limit",
                                                                               "tenant:acme|llm_call|llm"}
    acme = ok(dep.run("--json", "limits", "show", "tenant:acme"))
    assert [(r["rule_id"], r["inherited_from"]) for r in acme] == [("tenant:acme|*|limit", "tenant:*"),
                                                                   ("tenant:acme|llm_call|llm", None)]
    human = dep.run("limits", "show", "tenant:acme")
    assert human.returncode == 0 and "concurrency 2, rate 10/1s burst 5" in human.stdout
    assert "(from tenant:*)" in human.stdout and "20000 tokens/1m, $5/1m; fail" in human.stdout
    assert ok(dep.run("--json", "limits", "show", "tenant:zeta"))[0]["inherited_from"] == "tenant:*"
    # set again: replaced whole, by id
    ok(dep.run("--json", "limits", "set", "tenant:*", "--concurrency", "1"))
    assert dep.registry.rule("tenant:*|*|limit") == LimitRule("tenant:*", concurrency=1)
    # delete
    gone = "tenant:acme|llm_call|llm"
    assert ok(dep.run("--json", "limits", "delete", gone)) == {"deleted": gone}
    refused(dep.run("limits", "delete", "tenant:acme|llm_call|llm"), 3, "no rule tenant:acme|llm_call|llm")
    # A concrete id of a pattern's rule says where the rule is
    refused(dep.run("limits", "delete", "tenant:acme|*|limit"), 3, "delete tenant:*|*|limit")
    assert [r["rule_id"] for r in ok(dep.run("--json", "limits", "show"))] == ["tenant:*|*|limit"]


BAD_SETS = [
    (["tenant", "--concurrency", "1"], "KEY"),
    (["team:acme", "--concurrency", "1"], "KEY"),
    (["tenant:acme", "--concurrency", "-1"], "--concurrency"),
    (["tenant:acme", "--concurrency", "0"], "--concurrency"),
    (["tenant:acme", "--concurrency", "two"], "--concurrency"),
    (["tenant:acme", "--rate", "-3"], "--rate"),
    (["tenant:acme", "--rate", "3", "--per", "0s"], "--per"),
    (["tenant:acme", "--rate", "3", "--per", "1y"], "--per"),
    (["tenant:acme", "--rate", "3", "--per", "-1s"], "--per"),
    (["tenant:acme", "--rate", "3", "--burst", "-1"], "--burst"),
    (["tenant:acme", "--concurrency", "3", "--burst", "2"], "--burst"),
    (["tenant:acme", "--concurrency", "3", "--per", "1s"], "--per"),
    (["tenant:acme", "--tokens", "0"], "--tokens"),
    (["tenant:acme", "--tokens", "100", "--window", "0m"], "--window"),
    (["tenant:acme", "--tokens", "100", "--window", "5 weeks"], "--window"),
    (["tenant:acme", "--concurrency", "3", "--window", "1m"], "--window"),
    (["tenant:acme", "--cost-usd", "-1"], "--cost-usd"),
    (["tenant:acme", "--cost-usd", "nan"], "--cost-usd"),
    (["tenant:acme", "--concurrency", "1", "--weight", "0"], "--weight"),
    (["tenant:acme", "--concurrency", "1", "--on-exhausted", "drop"], "--on-exhausted"),
    (["tenant:acme", "--concurrency", "1", "--scope", "llm"], "--scope"),
    (["tenant:acme", "--tokens", "5", "--scope", "tool:search"], "--scope"),
    (["tenant:acme", "--concurrency", "1", "--name", "a b"], "--name"),
    (["tenant:acme"], "--concurrency"),
]


def test_bad_input_names_the_option_exits_2_and_writes_nothing(dep):
    dep.registry.set_rule(LimitRule("global", concurrency=4))
    dep.registry.set_price("gpt-4o", 2.5, 10)
    before = dep.flow_state()
    for args, option in BAD_SETS:
        refused(dep.run("limits", "set", *args), 2, option)
    refused(dep.run("limits", "show", "tenant:"), 2, "KEY")
    refused(dep.run("limits", "delete", "tenant:acme"), 2, "RULE_ID")
    refused(dep.run("limits", "delete", "bad:key|*|limit"), 2, "KEY")
    refused(dep.run("limits", "usage", "tenant:*"), 2, "KEY", "pattern")
    refused(dep.run("prices", "set", "gpt-4o", "--input-per-mtok", "-1", "--output-per-mtok", "1"), 2,
            "--input-per-mtok")
    refused(dep.run("prices", "set", "gpt-4o", "--input-per-mtok", "1", "--output-per-mtok", "inf"), 2,
            "--output-per-mtok")
    refused(dep.run("prices", "set", "a model", "--input-per-mtok", "1", "--output-per-mtok", "1"), 2, "MODEL")
    refused(dep.run("prices", "set", "gpt-4o", "--input-per-mtok", "1"), 2, "--output-per-mtok")
    refused(dep.run("prices", "delete", "nothing-here"), 3, "nothing-here")
    assert dep.flow_state() == before


def test_prices_set_show_and_the_default(dep):
    assert ok(dep.run("--json", "prices", "show")) == {}
    human = dep.run("prices", "show")
    assert human.returncode == 0 and "models not listed: refused" in human.stdout
    assert ok(dep.run("--json", "prices", "set", "gpt-4o", "--input-per-mtok", "2.5", "--output-per-mtok", "10")) == \
        {"model": "gpt-4o", "input_usd_per_mtok": 2.5, "output_usd_per_mtok": 10.0}
    ok(dep.run("--json", "prices", "set", "*", "--input-per-mtok", "1", "--output-per-mtok", "2"))
    assert ok(dep.run("--json", "prices", "show")) == {
        "*": {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0},
        "gpt-4o": {"input_usd_per_mtok": 2.5, "output_usd_per_mtok": 10.0}}
    assert "models not listed: priced as `*`" in dep.run("prices", "show").stdout
    assert dep.registry.cost_usd("unlisted", 1_000_000, 0) == pytest.approx(1.0)
    assert ok(dep.run("--json", "prices", "delete", "*")) == {"deleted": "*"}
    assert set(dep.registry.prices()) == {"gpt-4o"}


def test_usage_reads_holders_buckets_and_budgets(dep):
    dep.registry.set_rule(LimitRule("tenant:*", concurrency=2, rate=10, per_s=60, burst=4))
    dep.registry.set_rule(LimitRule("tenant:acme", name="budget", scope="llm_call", tokens=20_000, cost_usd=5,
                                    window_s=3600))
    # Given what the admission script keeps after two admissions under acme: an LLM call holding
    # a slot and a reservation of 1,000 tokens, and a run start whose lease expired already
    path = AdmissionKeys(tenant="acme").path("wf")
    admission = Admission(dep.client, dep.keys)
    assert admission.acquire("r-1/k1/1", applicable(dep.registry.rules(), path, "llm_call"), tokens=1000,
                             lease_ms=60_000).admitted
    assert admission.acquire("r-2/start/1", applicable(dep.registry.rules(), path, "run"), lease_ms=1).admitted
    time.sleep(0.05)
    dep.client.zadd(dep.keys.deferred("tenant:acme"), {"a": 1, "b": 2})
    usage = ok(dep.run("--json", "limits", "usage", "tenant:acme"))
    assert usage["key"] == "tenant:acme" and usage["deferred"] == 2
    rid, budget_rid = "tenant:acme|*|limit", "tenant:acme|llm_call|budget"
    rows = {r["rule_id"]: r for r in usage["rules"]}
    assert set(rows) == {rid, budget_rid}
    assert rows[rid]["pattern"] == "tenant:*" and rows[budget_rid]["pattern"] is None
    assert rows[rid]["label"] == "tenant:acme concurrency rate"
    slots = rows[rid]["concurrency"]
    assert slots["limit"] == 2 and slots["expired"] == 1 and [h["holder"] for h in slots["holders"]] == ["r-1/k1/1"]
    # 10 a minute with a burst of 4: 5 at once when idle, two taken (one every 6 s comes back)
    assert rows[rid]["rate"]["available"] == 3
    spent = rows[budget_rid]["budget"]
    assert spent["tokens_spent"] == 1000 and spent["tokens_limit"] == 20_000 and spent["open_reservations"] == 1
    assert spent["resets_ms"] > usage["now_ms"]
    human = dep.run("limits", "usage", "tenant:acme")
    assert human.returncode == 0, human.stderr
    for words in ("tenant:acme|*|limit  (from tenant:*)", "1 of 2 held (+1 expired", "r-1/k1/1 until",
                  "3 available now (of 5", "1,000 of 20,000 tokens", "$0.0000 of $5", "1 open reservation",
                  "deferred items: 2"):
        assert words in human.stdout, (words, human.stdout)
    # A key with no rule says so
    assert ok(dep.run("--json", "limits", "usage", "user:nobody"))["rules"] == []
    assert "no rule of its own" in dep.run("limits", "usage", "user:nobody").stdout


def test_help_and_the_registry_is_json(dep):
    for command in ("limits", "limits set", "limits show", "limits delete", "limits usage", "prices", "prices set",
                    "prices show"):
        proc = dep.run(*command.split(), "--help")
        assert proc.returncode == 0 and "Usage:" in proc.stdout, (command, proc.stderr)
    ok(dep.run("--json", "limits", "set", "global", "--concurrency", "4"))
    raw = dep.client.hget(dep.keys.limits(), "global|*|limit")
    assert json.loads(raw)["concurrency"] == 4


def test_start_admits_the_run_under_its_keys_and_priority(dep):
    workflows = {"ABSTRACTRUNTIME_IMPORTS": "support.celery_scenarios",
                 "PYTHONPATH": str(Path(__file__).resolve().parent)}
    out = ok(dep.run("start", "tools", "--tenant", "acme", "--user", "u-7", "--priority", "1", "--json",
                     **workflows))
    run = dep.backend.runs.load(out["run_id"])
    assert run.vars["_flow"] == {"tenant": "acme", "user": "u-7", "priority": 1}
    # a start a rule refuses is an error naming the rule, and stores nothing
    dep.registry.set_rule(LimitRule("tenant:acme", scope="run", rate=1, per_s=3600, on_exhausted="fail"))
    ok(dep.run("start", "tools", "--tenant", "acme", "--json", **workflows))
    before = dep.flow_state()
    refused(dep.run("start", "tools", "--tenant", "acme", "--run-id", "not-stored", **workflows), 1,
            "tenant:acme/run rate")
    assert dep.backend.runs.load("not-stored") is None
    refused(dep.run("start", "tools", "--tenant", "a b", **workflows), 2, "tenant")
    refused(dep.run("start", "tools", "--priority", "9", **workflows), 2, "--priority")
    assert dep.flow_state() == before
