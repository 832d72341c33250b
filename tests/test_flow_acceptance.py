"""Flow control's acceptance on real Redis and real Celery worker processes (issue 14), shortened
to fit a 2-core CI machine (about 2 minutes in all; ``FLOW_ACCEPTANCE_FULL=1`` runs the rate and
the budget at the issue's sizes, 20 s and 20,000 tokens a minute, about 5 minutes more):

* rate: 10 tool calls a second with a burst of 3 on one tenant, 100 runs wanting more, about 10 s
  (the issue says 20 s): no 1-second window holds more than 10 + 3 admissions (Redis clock) nor
  tool starts (wall clock, the window narrowed by how unevenly tools start after admission);
* token budget: 2,000 LLM tokens per 5 s window (the issue: 20,000 a minute) against the loopback
  fake LLM through AbstractCore's handler, 8 calls of 600 tokens each: runs are deferred (explain
  says BUDGET_EXHAUSTED naming the rule), resume when the window refills, and no window spends
  more than its budget (estimate = usage here, so one call's overshoot is 0);
* fairness: run starts limited to 20 a second; tenant A starts 1,000 runs, then tenant B 10:
  every one of B's runs begins before A begins 12 more (turns alternate: about 10);
* slot leaks: concurrency 2 on one tenant, 3 s tools, 2 s leases, a sweep each 0.5 s; the worker
  SIGKILLed 20 times while it holds slots (as the issue asks), and one dispatched effect message
  dropped from the broker: after one lease plus one sweep period no slot is held by a dead
  holder, the sweep reports slots reclaimed, and every run completes.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from runtime import RunStatus
from stores.redis.flowkeys import FlowKeys
from workers.flow import LimitRule
from workers.flow.resolve import registry as limits_of

from support.flow_scenarios import most_at_once, windows_over
from support.processes import until

TESTS_DIR = Path(__file__).resolve().parent
CLI = str(Path(sys.executable).with_name("abstractruntime"))


def cli(group: Any, *args: str) -> Any:
    """``abstractruntime ARGS --json`` in the group's deployment, as an operator types it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_") and k != "PYTHONPATH"}
    env.update(group.env, PYTHONPATH=str(TESTS_DIR))
    proc = subprocess.run([CLI, *args, "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr}"
    return json.loads(proc.stdout)


def all_complete(client: Any, ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for rid in ids:
        state = client.wait_for(rid, [RunStatus.COMPLETED, RunStatus.FAILED],
                                timeout=max(1.0, deadline - time.monotonic()))
        assert state.status == RunStatus.COMPLETED, (rid, state.status, state.error)


# -- rate ----------------------------------------------------------------------------------------

#: ``FLOW_ACCEPTANCE_FULL=1``: the issue's 20 s (200 runs at 10 a second) instead of 10 s.
FULL = os.environ.get("FLOW_ACCEPTANCE_FULL") == "1"
RATE, BURST, RATE_RUNS = 10, 3, 200 if FULL else 100


@pytest.mark.timeout(240)
def test_a_rate_rule_never_lets_more_than_rate_plus_burst_start_in_one_second(fresh, redis_server, tmp_path):
    # Given a tenant limited to 10 tool calls a second (burst 3), on 6 worker processes
    g = fresh(tick_backoff_s=0.05, effect_lease_s=10, flow_rules_cache_s=0.2, imports="support.flow_scenarios")
    client = g.client()
    limits_of(client.backend).set_rule(LimitRule(key="tenant:acme", scope="tool_calls", rate=RATE, per_s=1,
                                                 burst=BURST))
    g.start_worker("a", pool="prefork", concurrency=3)
    g.start_worker("b", pool="prefork", concurrency=3)
    stamps = tmp_path / "stamps.jsonl"
    base = {"path": str(stamps), "tenant": "acme", "redis_url": redis_server.url,
            "holders_key": FlowKeys(client.backend.keys.prefix).holders(), "lease_ms": 10_000}
    # If 100 runs want a tool call at once
    began = time.time()
    ids = [client.start("stamped", vars=base, tenant="acme") for _ in range(RATE_RUNS)]
    # I expect them all to complete, at about the rate
    all_complete(client, ids, timeout=RATE_RUNS * 0.9)
    took = time.time() - began
    calls = [json.loads(line) for line in stamps.read_text().splitlines()]
    assert len(calls) == RATE_RUNS
    starts = [c["start"] for c in calls]
    admitted = [c["admitted"] for c in calls]
    assert None not in admitted, "an attempt ran without a flow-control share"
    # and no 1-second window (starting at any recorded start) to hold more than rate + burst
    assert windows_over(admitted, 1.0) <= RATE + BURST, "admissions (Redis clock)"
    # A tool starts a few ms after its admission, not always the same few: GCRA admits rate + burst
    # + 1 in a closed second (burst + 1 at t, then one each 0.1 s up to t + 1), so a window of
    # starts is narrowed by that spread, or a start 7 ms late and one 1 ms late fit 14 in a second.
    delays = [c["start"] - c["admitted"] for c in calls]
    spread = max(delays) - min(delays)
    # (admitted before the send, the first burst's messages wait behind the 100 first ticks in the
    # workers' prefetch: up to about 0.25 s here; later ones start within milliseconds)
    assert spread < 0.4, f"tools started up to {spread:.3f}s apart from their admission: nothing to measure"
    assert windows_over(starts, 1.0 - spread) <= RATE + BURST, "tool starts (wall clock)"
    # The rule was what held them back: 100 at 10 a second take (100 - 1 - burst) / 10 s at least.
    span = max(admitted) - min(admitted)
    assert span >= (RATE_RUNS - 1 - BURST) / RATE - 0.05, span
    print(f"rate: {RATE_RUNS} runs in {took:.1f}s, admissions over {span:.1f}s, "
          f"busiest second {windows_over(admitted, 1.0)} admissions, {windows_over(starts, 1.0)} starts "
          f"(start delays spread {spread * 1000:.0f} ms); "
          f"{(g.log('a') + g.log('b')).count('deferred by flow-control rule')} deferrals")


# -- token budget --------------------------------------------------------------------------------

#: ``FLOW_ACCEPTANCE_FULL=1``: the issue's 20,000 tokens a minute (calls of 6,000) instead of 2,000 per 5 s.
BUDGET, WINDOW_S, CALL_TOKENS, LLM_RUNS = (20_000, 60.0, 6_000, 8) if FULL else (2_000, 5.0, 600, 8)


class _TimedRequests(list):  # type: ignore[type-arg]
    """The fake's request list, stamping each request with when it arrived (wall clock)."""

    def append(self, item: Any) -> None:
        item["at"] = time.time()
        super().append(item)


@pytest.mark.timeout(400 if FULL else 120)
def test_a_token_budget_defers_llm_calls_until_the_window_refills_and_is_never_overspent(fresh, redis_server,
                                                                                         tmp_path):
    pytest.importorskip("abstractcore", reason="the abstractcore package is in the dev extra")
    from stores.redis.admission import Admission

    from support.fake_openai import FakeOpenAI

    with FakeOpenAI() as fake:
        fake.server.requests = _TimedRequests()
        # Given a budget of 2,000 tokens per 5 s for one tenant's LLM calls, each call reserving 600
        # (the estimate) and the fake reporting 600 used (595 prompt words + 5), on AbstractCore
        g = fresh(tick_backoff_s=0.05, effect_lease_s=10, flow_rules_cache_s=0.2,
                  flow_llm_estimate_tokens=CALL_TOKENS, imports="support.flow_scenarios")
        g.env["FLOW_FAKE_OPENAI_URL"] = fake.base_url
        client = g.client()
        rule = LimitRule(key="tenant:acme", name="tokens", scope="llm_call", tokens=BUDGET, window_s=WINDOW_S)
        rid = "tenant:acme|llm_call|tokens"
        limits_of(client.backend).set_rule(rule)
        g.start_worker("a", pool="prefork", concurrency=3)
        admission = Admission(client.backend.client, FlowKeys(client.backend.keys.prefix))
        # If 8 runs of that tenant each make one call (4,800 tokens: three windows' worth)
        calls_path = tmp_path / "calls.jsonl"
        run_vars = {"prompt": " ".join(["word"] * (CALL_TOKENS - 5)), "path": str(calls_path),
                    "redis_url": redis_server.url, "holders_key": FlowKeys(client.backend.keys.prefix).holders(),
                    "lease_ms": 10_000}
        ids = [client.start("asks", vars=run_vars, tenant="acme") for _ in range(LLM_RUNS)]
        # I expect some to be deferred, explain naming the budget
        spent: dict[int, int] = {}  # window start (ms) -> most tokens seen spent in it

        def look() -> None:
            u = admission.usage(rid, rule)["budget"]
            spent[u["window_start_ms"]] = max(spent.get(u["window_start_ms"], 0), u["tokens_spent"])

        # (the run furthest from its refill is asked: explain takes a second to start)
        parked, out, refills_ms = None, {"code": None}, None
        deadline = time.monotonic() + 20
        while out["code"] != "BUDGET_EXHAUSTED" and time.monotonic() < deadline:
            look()
            fields = {r: client.backend.client.hget(client.backend.keys.run(r), "a") for r in ids}
            waits = {r: w for r, w in ((r, json.loads(a)) for r, a in fields.items() if a) if w.get("until_ms")}
            if not waits:
                time.sleep(0.05)
                continue
            parked = max(waits, key=lambda r: waits[r]["until_ms"])
            refills_ms = waits[parked]["until_ms"]
            out = cli(g, "explain", parked)
        assert out["code"] == "BUDGET_EXHAUSTED", out
        assert "tenant:acme/llm_call tokens" in out["sentence"] and "refills" in out["sentence"], out
        assert out["evidence"]["deferred"]["rule_id"] == rid, out
        usage = cli(g, "limits", "usage", "tenant:acme")
        (mine,) = [r for r in usage["rules"] if r["rule_id"] == rid]
        assert mine["budget"]["tokens_limit"] == BUDGET and mine["budget"]["tokens_spent"] <= BUDGET, mine
        # and all to complete as the windows refill, none spending more than its budget
        deadline = time.monotonic() + 12 * WINDOW_S
        while time.monotonic() < deadline and not all(
                client.get_state(r).status in (RunStatus.COMPLETED, RunStatus.FAILED) for r in ids):
            look()
            time.sleep(0.05)
        all_complete(client, ids, timeout=5)
        asked = [r for r in fake.requests if r["path"].endswith("/chat/completions")]
        assert len(asked) == LLM_RUNS  # each call made once
        for run_id in ids:
            (done,) = [r for r in client.get_ledger(run_id) if r["node_id"] == "ask" and r["status"] == "completed"]
            assert done["result"]["usage"]["total_tokens"] == CALL_TOKENS
        # Tokens are spent in the window of the call's admission (a reservation, settled with the
        # usage later); a call's request may reach the LLM in the next window (a new worker process
        # imports AbstractCore first), so the windows are counted by admission, not by request.
        calls = [json.loads(line) for line in calls_path.read_text().splitlines()]
        assert len(calls) == LLM_RUNS and None not in [c["admitted"] for c in calls], calls
        (again,) = [c for c in calls if c["run_id"] == parked]
        assert again["admitted"] * 1000 >= refills_ms, "the parked call went before its window refilled"
        window_ms = int(WINDOW_S * 1000)
        per_window: dict[int, int] = {}
        for c in calls:
            start = int(c["admitted"] * 1000) // window_ms * window_ms
            per_window[start] = per_window.get(start, 0) + c["usage"]["total_tokens"]
        overshoot = 0  # each call's usage is its estimate: nothing to settle beyond the reservation
        after = admission.usage(rid, rule)["budget"]
        assert after["open_reservations"] == 0, after  # every reservation settled with its usage
        assert client.backend.client.zcard(FlowKeys(client.backend.keys.prefix).holders()) == 0
        assert max(spent.values()) <= BUDGET + overshoot, spent
        assert max(per_window.values()) <= BUDGET + overshoot, per_window
        assert len(per_window) >= 3, f"{LLM_RUNS * CALL_TOKENS} tokens took fewer than three windows: {per_window}"
        print(f"budget: {LLM_RUNS} calls over {len(per_window)} windows, tokens per window "
              f"{sorted(per_window.values())}, most seen spent in Redis {max(spent.values())}, "
              f"explain said {out['code']}")


# -- slot leaks ----------------------------------------------------------------------------------

KILLS, SLOW_S, LEASE_S, SWEEP_S, LEAK_RUNS = 20, 3.0, 2.0, 0.5, 10
#: Seconds a check waits beyond one lease plus one sweep period (the sweep task's own latency).
MARGIN_S = 0.5


def _body_args(raw: bytes) -> list[Any]:
    """The positional arguments of a Celery message as the Redis transport keeps it (msgpack body)."""
    import msgpack

    message = json.loads(raw)
    return list(msgpack.unpackb(base64.b64decode(message["body"]))[0])


@pytest.mark.timeout(200)
def test_killed_workers_and_a_dropped_message_leave_no_slot_to_a_dead_holder(fresh, tmp_path):
    # Given concurrency 2 on one tenant's tool calls, 3 s tools, leases of 2 s (renewed) and a sweep each 0.5 s
    g = fresh(tick_backoff_s=0.05, tick_lease_s=LEASE_S, effect_lease_s=LEASE_S, sweep_period_s=SWEEP_S,
              flow_rules_cache_s=0.2, imports="support.flow_scenarios")
    client = g.client()
    limits_of(client.backend).set_rule(LimitRule(key="tenant:acme", scope="tool_calls", concurrency=2))
    r = client.backend.client
    fk = FlowKeys(client.backend.keys.prefix)
    slots, holders = fk.slots("tenant:acme|tool_calls|limit"), fk.holders()

    def now_ms() -> int:
        seconds, micros = r.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def expired(key: str) -> list[tuple[str, float]]:
        now = now_ms()
        return [(m.decode(), s) for m, s in r.zrange(key, 0, -1, withscores=True) if s <= now]

    def no_dead_holder_after(killed_ms: int, ready_ms: int) -> None:
        """One lease after the kill (its shares' leases are over) plus one sweep period after a worker
        is there to run the sweep: only live holders are left."""
        due = max(killed_ms + LEASE_S * 1000, ready_ms) + (SWEEP_S + MARGIN_S) * 1000
        time.sleep(max(0.0, (due - now_ms()) / 1000))
        assert expired(slots) == [] and expired(holders) == [], (expired(slots), expired(holders))

    g.start_beat()
    # If one run's dispatched effect message is dropped from the broker (only ticks are consumed yet)
    g.start_worker("ticks", queues="ticks")
    probe = tmp_path / "probe.jsonl"
    ids = [client.start("probed", vars={"probe": str(probe), "tenant": "acme", "seconds": SLOW_S}, tenant="acme")
           for _ in range(LEAK_RUNS)]
    broker, tools_q = g.broker(), g.settings().queue("tools")
    # (each tick admitted its effect before sending it: two were sent, holding both slots, eight parked)
    assert until(lambda: broker.llen(tools_q) == 2 and r.zcard(fk.deferred("tenant:acme")) == LEAK_RUNS - 2), \
        (broker.llen(tools_q), r.zcard(fk.deferred("tenant:acme")))
    raw = broker.lindex(tools_q, 0)
    dropped = _body_args(raw)[0]
    assert dropped in ids and broker.lrem(tools_q, 1, raw) == 1
    # its attempt holds a slot it will never give back: the leak that froze Hatchet's queue
    assert [m for m in r.zrange(slots, 0, -1) if m.decode().startswith(dropped)]
    g.stop("ticks")
    # and the worker is SIGKILLed 20 times while it holds slots (at 4 points of the 3 s tool)
    killed_ms, kills, started = None, 0, 0
    while kills < KILLS:
        assert started < 2 * KILLS, f"only {kills} of {started} kills caught the worker holding a slot"
        name = f"w{started}"
        g.start_worker(name, pool="prefork", concurrency=3)
        started += 1
        if killed_ms is not None:  # I expect the dead worker's slots gone after a lease and a sweep
            no_dead_holder_after(killed_ms, now_ms())
        assert until(lambda: r.zcard(slots) > 0, 15), f"{name}: the new worker took no slot"
        time.sleep((kills % 4) * 0.6)
        until(lambda: r.zcard(slots) > 0, 5)
        g.kill(name)
        killed_ms = now_ms()
        held = [m for m, score in r.zrange(slots, 0, -1, withscores=True) if score > killed_ms]
        kills += bool(held)  # held by the dead worker: no other is running
    assert killed_ms is not None
    g.start_worker("last", pool="prefork", concurrency=3)
    no_dead_holder_after(killed_ms, now_ms())
    # and every run to complete, the dropped one too (the sweep sends its effect again)
    all_complete(client, ids, timeout=60)
    assert r.zcard(slots) == 0 and r.zcard(holders) == 0  # every share given back
    calls = [json.loads(line) for line in probe.read_text().splitlines()]
    assert most_at_once([(c["start"], c["end"]) for c in calls]) <= 2, sorted(
        (round(c["start"] % 1000, 2), round(c["end"] % 1000, 2), c["run_id"][:8], c["pid"]) for c in calls)
    logs = "".join(g.log(name) for name in ("beat", "last", *(f"w{i}" for i in range(started))))
    assert f"sweep: lease of run {dropped} expired; effect sent again" in logs
    reclaimed = sum(int(n) for n in re.findall(r"slots_reclaimed=(\d+)", logs))
    assert reclaimed > 0, "the sweep never reclaimed a slot"
    print(f"leaks: {kills} kills holding slots of {started}, {reclaimed} slots reclaimed by the sweep, "
          f"{len(calls)} tool calls done for {LEAK_RUNS} runs")


# -- fairness ------------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_ten_items_of_b_start_before_a_starts_twelve_more_of_its_thousand(fresh, tmp_path):
    # Given run starts limited to 20 a second, fleet-wide, and equal weights
    g = fresh(flow_rules_cache_s=0.2, imports="support.flow_scenarios")
    client = g.client()
    limits_of(client.backend).set_rule(LimitRule(key="global", name="starts", scope="run", rate=20, per_s=1))
    g.start_worker("w", pool="prefork", concurrency=2)
    g.start_beat()
    path = tmp_path / "begins.jsonl"
    # When tenant A enqueues 1,000 runs, then tenant B 10
    t0 = time.time()
    a_ids = [client.start("begins", vars={"path": str(path), "tenant": "a"}, tenant="a") for _ in range(1000)]
    b_from = time.time()
    b_ids = [client.start("begins", vars={"path": str(path), "tenant": "b"}, tenant="b") for _ in range(10)]

    def begun() -> dict[str, tuple[str, float]]:
        out: dict[str, tuple[str, float]] = {}
        for line in path.read_text().splitlines() if path.exists() else []:
            row = json.loads(line)
            out.setdefault(row["run_id"], (row["tenant"], row["t"]))  # a node run twice: its first time
        return out

    assert until(lambda: all(r in begun() for r in b_ids), 60), "B's runs did not all begin"
    seen = begun()
    b_last = max(seen[r][1] for r in b_ids)
    a_meanwhile = sorted(t for rid, (tenant, t) in seen.items() if tenant == "a" and b_from <= t <= b_last)
    a_before = sum(1 for rid, (tenant, t) in seen.items() if tenant == "a" and t < b_from)
    # Then all of B's begin before A begins 12 more
    assert len(a_meanwhile) < 12, (len(a_meanwhile), a_meanwhile)
    assert a_before >= 1 and len(a_ids) == 1000
    print(f"fairness: A enqueued 1,000 in {b_from - t0:.1f} s ({a_before} began meanwhile); B's 10 all began "
          f"{b_last - b_from:.2f} s after B enqueued, while A began {len(a_meanwhile)}")
