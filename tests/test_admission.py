"""Flow-control admission (issue 14): ``stores/redis/lua/admit*.lua`` through ``stores.redis.admission``.

A property test drives the scripts (real redis-server and fakeredis) and the pure-Python model
(``support.admission_model``) with the same random operations: every decision, every reply and
every stored value must agree, and the invariants hold after each step. Eight processes then
race 10,000 admissions on the same keys, and the stories of the issue's bad input follow.
"""

from __future__ import annotations

import multiprocessing
import random
import time
from typing import Any

import fakeredis
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from runtime import RunState, StepRecord
from stores.redis.admission import Admission, Decision, Verdict
from stores.redis.flowkeys import FlowKeys, rule_id
from workers.flow.rules import BudgetExceeded, LimitRule

from support.admission_model import AdmissionModel
from support.backends import fresh_prefix, redis_backend

T0 = 1_700_000_000_000  # the tests' clock starts here (epoch ms)
HOLDERS = [f"h{i}" for i in range(8)]


def client_of(kind: str, redis_server: Any, fake_redis_server: Any) -> Any:
    if kind == "redis":
        return redis_server.client()
    return fakeredis.FakeRedis(server=fake_redis_server)


def dump(adm: Admission, rids: list[str], holders: list[str]) -> dict[str, Any]:
    """What Redis holds, in the shape of ``AdmissionModel.snapshot()``."""
    c, k = adm.client, adm.keys
    out: dict[str, Any] = {"slots": {}, "tat": {}, "budgets": {}, "holders": {}, "held": {}}
    for rid in rids:
        members = c.zrange(k.slots(rid), 0, -1, withscores=True)
        if members:
            out["slots"][rid] = {m.decode(): int(s) for m, s in members}
        tat = c.get(k.rate(rid))
        if tat is not None:
            out["tat"][rid] = int(tat)
        raw = {f.decode(): v.decode() for f, v in c.hgetall(k.budget(rid)).items()}
        if raw:
            out["budgets"][rid] = {"w": int(raw["w"]), "t": int(raw["t"]), "c": int(raw["c"]),
                                   "res": {f[2:]: [int(x) for x in v.split(",")] for f, v in raw.items()
                                           if f.startswith("r:")}}
    out["holders"] = {m.decode(): int(s) for m, s in c.zrange(k.holders(), 0, -1, withscores=True)}
    for h in holders:
        rids_held = {r.decode() for r in c.smembers(k.held(h))}
        if rids_held:
            out["held"][h] = rids_held
    return out


# -- the property test -------------------------------------------------------------------------

rate_limits = st.one_of(st.none(), st.tuples(st.integers(1, 5), st.sampled_from([1.0, 2.0, 0.5]), st.integers(0, 2)))
budget_limits = st.one_of(st.none(), st.tuples(st.integers(100, 1000), st.sampled_from([1.0, 3.0, 10.0])))


@st.composite
def a_rule(draw: Any, key: str) -> LimitRule:
    concurrency = draw(st.one_of(st.none(), st.integers(1, 3)))
    rate, budget = draw(rate_limits), draw(budget_limits)
    cost = draw(st.one_of(st.none(), st.sampled_from([0.01, 0.05]))) if budget else None
    if concurrency is None and rate is None and budget is None:
        concurrency = 2
    return LimitRule(key=key, concurrency=concurrency,
                     rate=None if rate is None else rate[0], per_s=1.0 if rate is None else rate[1],
                     burst=0 if rate is None else rate[2], tokens=None if budget is None else budget[0],
                     cost_usd=cost, window_s=1.0 if budget is None else budget[1],
                     on_exhausted=draw(st.sampled_from(["wait"] * 7 + ["fail"])))


@st.composite
def rule_sets(draw: Any) -> dict[str, LimitRule]:
    """One rule per level: global, tenant:* (two tenants), user:* and agent:* (counted per concrete key)."""
    return {level: draw(a_rule("global" if level == "global" else f"{level}:*"))
            for level in ("global", "tenant", "user", "agent")}


def path_rules(rules: dict[str, LimitRule], holder: str) -> list[tuple[str, LimitRule]]:
    """Holder ``h<i>``: tenant t<i % 2>, user u<i % 3>, agent a<i % 2> (three levels plus global)."""
    i = int(holder[1:])
    keys = {"global": "global", "tenant": f"tenant:t{i % 2}", "user": f"user:u{i % 3}", "agent": f"agent:a{i % 2}"}
    return [(rule_id(keys[level], "*", "limit"), rule) for level, rule in rules.items()]


def all_rids(rules: dict[str, LimitRule]) -> list[str]:
    return sorted({rid for h in HOLDERS for rid, _rule in path_rules(rules, h)})


holders_st = st.sampled_from(HOLDERS)
acquires = st.tuples(st.just("acquire"), holders_st, st.sampled_from([0, 10, 40, 90, 150, 700, 1100]),
                     st.sampled_from([0.0, 0.001, 0.02]), st.integers(100, 4000))
operations = st.lists(st.one_of(
    acquires, acquires, acquires,
    st.tuples(st.just("release"), holders_st, st.booleans()),
    st.tuples(st.just("renew"), holders_st, st.integers(100, 3000)),
    st.tuples(st.just("reconcile"), holders_st, st.integers(0, 300), st.sampled_from([0.0, 0.003, 0.03])),
    st.tuples(st.just("expire"), holders_st),
    st.tuples(st.just("advance"), st.integers(1, 2500)),
    st.tuples(st.just("reclaim"), st.integers(1, 4)),), min_size=20, max_size=60)


def check_invariants(model: AdmissionModel, rules: dict[str, LimitRule], now: int,
                     allowance: dict[str, tuple[int, int, int]]) -> None:
    for h in HOLDERS:
        for rid, rule in path_rules(rules, h):
            if rule.concurrency is not None:  # holders <= limit on every level
                live = [e for e in model.slots.get(rid, {}).values() if e > now]
                assert len(live) <= rule.concurrency, (rid, live)
            if rule.rate is not None:  # the bucket never goes below empty
                emit = int(round(rule.per_s * 1_000_000 / rule.rate))
                assert model.tat.get(rid, 0) - now * 1000 <= rule.burst * emit + emit
            b = model.budgets.get(rid)
            if b is not None and b.l is not None and b.w == now - now % b.l:
                # never over-spent beyond what reconciliations charged over the estimates this window
                window, extra_t, extra_c = allowance.get(rid, (b.w, 0, 0))
                if window != b.w:
                    extra_t = extra_c = 0
                assert b.t >= 0 and b.c >= 0
                if rule.tokens is not None:
                    assert b.t <= rule.tokens + extra_t, (rid, b)
                if rule.cost_usd is not None:
                    assert b.c <= round(rule.cost_usd * 1_000_000) + extra_c, (rid, b)


@pytest.mark.timeout(600)  # a failure's shrinking may take minutes; a pass takes seconds
@pytest.mark.parametrize("kind", ["redis", "fakeredis"])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=rule_sets(), ops=operations)
def test_the_script_and_the_model_agree_on_every_step(kind, redis_server, fake_redis_server, rules, ops):
    now = [T0]
    adm = Admission(client_of(kind, redis_server, fake_redis_server), FlowKeys(fresh_prefix("adm")),
                    clock=lambda: now[0])
    model = AdmissionModel()
    rids = all_rids(rules)
    allowance: dict[str, tuple[int, int, int]] = {}  # rid -> (window, tokens, micro-dollars) charged beyond
    for op in ops:
        name, args = op[0], op[1:]
        if name == "acquire":
            holder, tokens, cost, lease = args
            got = adm.acquire(holder, path_rules(rules, holder), tokens=tokens, cost_usd=cost, lease_ms=lease)
            want = model.acquire(now[0], holder, path_rules(rules, holder), tokens=tokens, cost_usd=cost,
                                 lease_ms=lease)
            assert got == want, op
            event(f"acquire: {got.verdict.value} {got.kind or ''} {got.reason or ''}{' again' if got.again else ''}")
        elif name == "release":  # with the holder's rules (one round trip) or not (its held set read)
            freed = adm.release(args[0], path_rules(rules, args[0]) if args[1] else None)
            assert freed == model.release(now[0], args[0]), op
            event(f"release freed {min(freed, 2)}")
        elif name == "renew":
            assert adm.renew(args[0], args[1]) == model.renew(now[0], args[0], args[1]), op
        elif name == "reconcile":
            holder, used, cost = args
            before = {rid: (b.w, b.t, b.c) for rid, b in model.budgets.items()}
            settled = adm.reconcile(holder, None, used, cost)
            assert settled == model.reconcile(now[0], holder, None, used, cost), op
            event(f"reconcile settled {min(settled, 2)}")
            for rid, b in model.budgets.items():
                w, t, c = before.get(rid, (None, 0, 0))
                if w != b.w:
                    t = c = 0
                assert b.w is not None
                aw, at, ac = allowance.get(rid, (b.w, 0, 0))
                if aw != b.w:
                    at = ac = 0
                allowance[rid] = (b.w, at + max(0, b.t - t), ac + max(0, b.c - c))
        elif name == "expire":  # to the very end of the holder's lease (expiry <= now: expired)
            now[0] = max(now[0], model.holders.get(args[0], now[0]))
        elif name == "advance":
            now[0] += args[0]
        elif name == "reclaim":
            reclaimed = adm.reclaim_expired(args[0])
            assert reclaimed == model.reclaim_expired(now[0], args[0]), op
            event(f"reclaimed {min(reclaimed, 3)}")
        assert dump(adm, rids, HOLDERS) == model.snapshot(), op
        check_invariants(model, rules, now[0], allowance)
    for rid, rule in {rid: rule for h in HOLDERS for rid, rule in path_rules(rules, h)}.items():
        assert adm.usage(rid, rule) == model.usage(now[0], rid, rule)


# -- eight processes race 10,000 admissions ------------------------------------------------------

RACE_PROCESSES, RACE_ADMISSIONS = 8, 10_000
RACE_RATE, RACE_BURST = 400.0, 4  # per agent, per second


def race_rules(i: int) -> list[tuple[str, LimitRule]]:
    """Process i: tenant t<i % 2>, agent a<i % 4>; every process shares the global rules."""
    return [(rule_id("global", "*", "limit"), LimitRule(key="global", concurrency=5, tokens=10**9, window_s=10**7)),
            (rule_id(f"tenant:t{i % 2}", "*", "limit"), LimitRule(key="tenant:*", concurrency=3)),
            (rule_id(f"agent:a{i % 4}", "*", "limit"),
             LimitRule(key="agent:*", concurrency=2, rate=RACE_RATE, burst=RACE_BURST))]


def race_worker(url: str, prefix: str, i: int, count: int, out: Any) -> None:
    import redis

    adm = Admission(redis.Redis.from_url(url), FlowKeys(prefix))
    rng = random.Random(i)
    holds, deferred, used = [], 0, 0
    for n in range(count):
        holder = f"p{i}-{n}"
        while True:
            got = adm.acquire(holder, race_rules(i), tokens=20, lease_ms=60_000)
            if got.admitted:
                break
            deferred += 1
            time.sleep(0.0005)
        actual = rng.randint(0, 40)
        used += actual
        assert adm.reconcile(holder, rule_id("global", "*", "limit"), actual) == 1
        _freed, released = adm.release_timed(holder)
        holds.append((i, got.at_us, released))
    out.put((holds, deferred, used))


def max_overlap(intervals: list[tuple[int, int]]) -> int:
    events = sorted([(start, 1) for start, _end in intervals] + [(end, -1) for _start, end in intervals],
                    key=lambda e: (e[0], e[1]))  # at the same µs, a release before an admission
    level = peak = 0
    for _t, step in events:
        level += step
        peak = max(peak, level)
    return peak


@pytest.mark.timeout(180)
def test_eight_processes_racing_ten_thousand_admissions_never_break_a_limit(redis_server):
    # Given 8 processes, each with its own connection, admitting and releasing in a loop under
    # global concurrency 5, tenant concurrency 3 (4 processes per tenant), agent concurrency 2 and
    # rate 400/s burst 4 (2 processes per agent), and a global token budget reconciled each time,
    prefix = fresh_prefix("race")
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    per = RACE_ADMISSIONS // RACE_PROCESSES
    procs = [ctx.Process(target=race_worker, args=(redis_server.url, prefix, i, per, out))
             for i in range(RACE_PROCESSES)]
    for p in procs:
        p.start()
    results = [out.get(timeout=170) for _ in procs]
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    holds = [h for r, _d, _u in results for h in r]
    assert len(holds) == RACE_ADMISSIONS
    # I expect that the holds, timed by the Redis clock inside the scripts, never overlap beyond a limit,
    assert max_overlap([(a, r) for _i, a, r in holds]) <= 5
    for tenant in range(2):
        assert max_overlap([(a, r) for i, a, r in holds if i % 2 == tenant]) <= 3
    emit = int(round(1_000_000 / RACE_RATE))
    for agent in range(4):
        mine = [(a, r) for i, a, r in holds if i % 4 == agent]
        assert max_overlap(mine) <= 2
        # GCRA: within any D µs an agent admits at most (D + burst * T) / T + 1
        starts = sorted(a for a, _r in mine)
        span = 100_000
        j = 0
        for k, t in enumerate(starts):
            while starts[j] < t - span:
                j += 1
            assert k - j + 1 <= (span + RACE_BURST * emit) // emit + 1
    # that the racing really contended,
    assert sum(d for _r, d, _u in results) > 100
    # that the budget holds exactly what was reconciled,
    adm = Admission(redis_server.client(), FlowKeys(prefix))
    budget = adm.usage(rule_id("global", "*", "limit"), race_rules(0)[0][1])["budget"]
    assert budget["tokens_spent"] == sum(u for _r, _d, u in results) and budget["open_reservations"] == 0
    # and that nothing is held any more.
    assert adm.client.zcard(adm.keys.holders()) == 0
    for rid, _rule in race_rules(0) + race_rules(1) + race_rules(2) + race_rules(3):
        assert adm.client.zcard(adm.keys.slots(rid)) == 0


# -- stories -------------------------------------------------------------------------------------


@pytest.fixture(params=["redis", "fakeredis"])
def adm(request: pytest.FixtureRequest, redis_server: Any, fake_redis_server: Any) -> Admission:
    """An admission under a fresh prefix on the test clock (``adm.now[0]``, epoch ms)."""
    now = [T0]
    a = Admission(client_of(request.param, redis_server, fake_redis_server), FlowKeys(fresh_prefix("adm")),
                  clock=lambda: now[0])
    a.now = now  # type: ignore[attr-defined]
    return a


TENANT = rule_id("tenant:acme", "*", "limit")


def test_a_fail_rule_refuses_where_a_wait_rule_defers(adm):
    wait = LimitRule(key="tenant:acme", concurrency=1)
    fail = LimitRule(key="tenant:acme", name="hard", concurrency=1, on_exhausted="fail")
    hard = rule_id("tenant:acme", "*", "hard")
    assert adm.acquire("a", [(TENANT, wait), (hard, fail)], lease_ms=1000).admitted
    # Both rules are full: the fail rule wins, and the refusal says which rule and why.
    got = adm.acquire("b", [(TENANT, wait), (hard, fail)], lease_ms=1000)
    assert (got.verdict, got.rule_id, got.kind, got.reason) == (Verdict.REFUSED, hard, "concurrency", "exhausted")
    # The wait rule alone defers until a's lease expires.
    got = adm.acquire("b", [(TENANT, wait)], lease_ms=1000)
    assert (got.verdict, got.rule_id, got.until_ms) == (Verdict.DEFERRED, TENANT, T0 + 1000)
    # Nothing was taken by either: b holds nothing.
    assert adm.client.zscore(adm.keys.holders(), "b") is None
    assert BudgetExceeded(got.rule_id, "exhausted").rule == TENANT


def test_a_reservation_larger_than_the_whole_budget_is_refused_at_once(adm):
    rule = LimitRule(key="tenant:acme", tokens=1000, cost_usd=0.5, window_s=60)
    got = adm.acquire("a", [(TENANT, rule)], tokens=1001, lease_ms=1000)
    assert (got.verdict, got.kind, got.reason) == (Verdict.REFUSED, "tokens", "oversize")
    got = adm.acquire("a", [(TENANT, rule)], tokens=10, cost_usd=0.6, lease_ms=1000)
    assert (got.verdict, got.kind, got.reason) == (Verdict.REFUSED, "cost_usd", "oversize")
    # One that fits but not now waits for the window's end instead.
    assert adm.acquire("a", [(TENANT, rule)], tokens=600, lease_ms=1000).admitted
    got = adm.acquire("b", [(TENANT, rule)], tokens=600, lease_ms=1000)
    window_end = T0 - T0 % 60_000 + 60_000
    assert (got.verdict, got.kind, got.until_ms) == (Verdict.DEFERRED, "tokens", window_end)
    adm.now[0] = window_end
    assert adm.acquire("b", [(TENANT, rule)], tokens=600, lease_ms=1000).admitted


def test_admitting_the_same_holder_again_takes_nothing_more(adm):
    rules = [(TENANT, LimitRule(key="tenant:acme", concurrency=2, rate=1, tokens=100, window_s=60))]
    first = adm.acquire("run-1/step/1", rules, tokens=30, lease_ms=5000)
    again = adm.acquire("run-1/step/1", rules, tokens=30, lease_ms=5000)  # a redelivered task
    assert first.admitted and not first.again and again.admitted and again.again
    use = adm.usage(TENANT, rules[0][1])
    assert len(use["concurrency"]["holders"]) == 1 and use["budget"]["tokens_spent"] == 30
    assert use["rate"]["available"] == 0  # one emission, not two: another holder waits a second
    assert adm.acquire("run-2/step/1", rules, lease_ms=5000).until_ms == T0 + 1000


def test_admitted_again_near_its_lease_end_a_holder_is_renewed(adm):
    # Given an attempt admitted before its message was sent, with a lease of 3 s
    rules = [(TENANT, LimitRule(key="tenant:acme", concurrency=1))]
    assert adm.acquire("run-1/step/1", rules, lease_ms=3000).admitted

    def expiry() -> int:
        return int(adm.client.zscore(adm.keys.slots(TENANT), "run-1/step/1"))

    # When its task starts with most of the lease left, nothing changes (the admission time stays readable)
    adm.now[0] += 1000
    assert adm.acquire("run-1/step/1", rules, lease_ms=3000).again and expiry() == T0 + 3000
    # but with less than a third left, its slot and its lease are renewed, so they cannot lapse as it starts
    adm.now[0] += 1500
    assert adm.acquire("run-1/step/1", rules, lease_ms=3000).again and expiry() == T0 + 5500
    assert int(adm.client.zscore(adm.keys.holders(), "run-1/step/1")) == T0 + 5500
    adm.now[0] += 2900  # past the first lease the slot is still held: nobody else is let in
    assert adm.acquire("run-2/step/1", rules, lease_ms=3000).verdict is Verdict.DEFERRED


def test_a_new_holder_does_not_overtake_its_queue_and_a_live_one_is_let_through(adm):
    rules = [(TENANT, LimitRule(key="tenant:acme", concurrency=5))]
    queue = adm.keys.deferred("tenant:acme")
    assert adm.acquire("run-1/step/1", rules, lease_ms=3000, behind=queue).admitted  # an empty queue
    adm.client.zadd(queue, {"e|run-0/step/1": 1})  # work waits its turn
    waits = adm.acquire("run-2/step/1", rules, lease_ms=3000, behind=queue)
    assert (waits.verdict, waits.rule_id, waits.kind, waits.until_ms) == (Verdict.DEFERRED, None, "queue", None)
    assert adm.usage(TENANT, rules[0][1])["concurrency"]["holders"][0]["holder"] == "run-1/step/1"  # nothing taken
    assert adm.acquire("run-1/step/1", rules, lease_ms=3000, behind=queue).again  # already in: let through
    assert adm.acquire("run-2/step/1", rules, lease_ms=3000).admitted  # the dispatcher's admission: no queue named
    freed, _at, waiting = adm.release_peek("run-2/step/1", rules, peek=queue)
    assert (freed, waiting) == (1, 1)


def test_the_sweep_reclaims_the_slots_of_expired_holders_and_counts_them(adm):
    rules = [(TENANT, LimitRule(key="tenant:acme", concurrency=2)),
             (rule_id("global", "*", "limit"), LimitRule(key="global", concurrency=10))]
    assert adm.acquire("dead-1", rules, lease_ms=1000).admitted
    assert adm.acquire("dead-2", rules, lease_ms=1000).admitted
    assert not adm.acquire("live", rules, lease_ms=1000).admitted
    adm.now[0] += 1000  # both leases end: their slots stop counting at once
    assert adm.acquire("live", rules, lease_ms=5000).admitted
    assert adm.acquire("dead-2", rules, lease_ms=5000).admitted  # admitted afresh: its two old slots retaken
    assert not adm.renew("dead-1", 1000)  # too late: its slot may be someone else's now
    assert adm.reclaim_expired(limit=100) == 4  # dead-1 swept, dead-2's retaken: two holders x two rules
    assert adm.reclaim_expired(limit=100) == 0
    assert adm.client.zcard(adm.keys.slots(TENANT)) == 2  # live and dead-2, admitted again
    assert not adm.client.exists(adm.keys.held("dead-1"))
    assert adm.release("dead-2") == 2
    # A renewed holder is not reclaimed.
    adm.now[0] += 4000
    assert adm.renew("live", 10_000)
    adm.now[0] += 5000
    assert adm.reclaim_expired() == 0
    assert [h["holder"] for h in adm.usage(TENANT, rules[0][1])["concurrency"]["holders"]] == ["live"]


def test_release_after_the_result_commits_frees_the_slot(redis_server):
    # Given a run whose effect holds the one slot of its tenant,
    backend = redis_backend(redis_server.client())
    adm = Admission(backend.client, FlowKeys(backend.keys.prefix))
    rules = [(TENANT, LimitRule(key="tenant:acme", concurrency=1))]
    run = RunState.new(workflow_id="w", entry_node="a", run_id=fresh_prefix("r"), vars={})
    backend.commit(run, [], create=True)
    holder = f"{run.run_id}/a/1"
    assert adm.acquire(holder, rules, lease_ms=30_000).admitted
    assert adm.acquire("other/a/1", rules, lease_ms=30_000).verdict is Verdict.DEFERRED
    # when the effect's result commits and the holder releases,
    record = StepRecord.start(run=run, node_id="a", effect=None, idempotency_key="k").finish_success({"ok": 1})
    backend.commit(run, [record])
    assert adm.release(holder) == 1
    # I expect the next one in, and the holder gone from every index.
    assert adm.acquire("other/a/1", rules, lease_ms=30_000).admitted
    assert adm.client.zscore(adm.keys.holders(), holder) is None
    assert not adm.client.exists(adm.keys.held(holder))
    assert adm.release(holder) == 0  # a second release changes nothing


def test_reconcile_refunds_or_charges_the_difference_once(adm):
    rule = LimitRule(key="tenant:acme", tokens=1000, cost_usd=1.0, window_s=60)
    rules = [(TENANT, rule)]
    assert adm.acquire("a", rules, tokens=500, cost_usd=0.5, lease_ms=1000).admitted
    assert adm.acquire("b", rules, tokens=400, cost_usd=0.4, lease_ms=1000).admitted
    # a used less than its estimate (a refund), b more (a charge, beyond the budget)
    assert adm.reconcile("a", TENANT, actual_tokens=120, actual_cost_usd=0.1) == 1
    assert adm.reconcile("b", None, actual_tokens=950, actual_cost_usd=0.45) == 1
    assert adm.reconcile("b", None, actual_tokens=950, actual_cost_usd=0.45) == 0  # a redelivered result
    budget = adm.usage(TENANT, rule)["budget"]
    assert (budget["tokens_spent"], budget["cost_usd_spent"], budget["open_reservations"]) == (1070, 0.55, 0)
    got = adm.acquire("c", rules, tokens=1, lease_ms=1000)
    assert (got.verdict, got.kind) == (Verdict.DEFERRED, "tokens")
    # A reservation settled after its window ended charges only the overshoot, to the new window.
    adm.now[0] = budget["resets_ms"]
    assert adm.acquire("d", rules, tokens=100, cost_usd=0.1, lease_ms=1000).admitted
    adm.now[0] += 60_000
    assert adm.reconcile("d", TENANT, actual_tokens=130, actual_cost_usd=0.05) == 1
    budget = adm.usage(TENANT, rule)["budget"]
    assert (budget["tokens_spent"], budget["cost_usd_spent"]) == (30, 0.0)


def test_on_the_redis_clock_keys_expire_and_decisions_carry_its_time(redis_server):
    adm = Admission(redis_server.client(), FlowKeys(fresh_prefix("adm")))
    rules = [(TENANT, LimitRule(key="tenant:acme", concurrency=1, rate=1, tokens=100, window_s=60))]
    seconds, micros = adm.client.time()
    got = adm.acquire("a", rules, tokens=10, lease_ms=1000)
    assert got.admitted and abs(got.at_us - (seconds * 1_000_000 + micros)) < 5_000_000
    assert 0 < adm.client.pttl(adm.keys.rate(TENANT)) <= 2000
    assert 0 < adm.client.pttl(adm.keys.budget(TENANT)) <= 121_000
    got = adm.acquire("b", rules, lease_ms=1000)
    assert got.verdict is Verdict.DEFERRED and got.kind in ("concurrency", "rate")
    # within the 1 s lease or rate step, give or take the rounding of µs up to a whole ms
    assert got.until_ms is not None and 0 < got.until_ms - got.at_us // 1000 <= 1001
    assert adm.release("a") == 1 and adm.reclaim_expired() == 0


def test_a_decision_is_a_plain_value():
    assert Decision(Verdict.ADMITTED).admitted and not Decision(Verdict.DEFERRED, "x", "rate", 1).admitted


def test_a_release_given_the_rules_takes_one_round_trip_and_still_frees_everything(adm):
    # Given a holder admitted under a slot rule, a budget rule and a rate rule,
    slot = (TENANT, LimitRule(key="tenant:acme", concurrency=1))
    budget = (rule_id("global", "*", "limit"), LimitRule(key="global", tokens=1000, window_s=60))
    rate = (rule_id("agent:a", "*", "limit"), LimitRule(key="agent:a", rate=5))
    assert adm.acquire("h", [slot, budget, rate], tokens=10, lease_ms=1000).admitted
    # when it is released with the rules it was admitted under, the held set is not read first,
    reads: list[str] = []
    real = adm._held
    adm._held = lambda holders: reads.append("held") or real(holders)  # type: ignore[method-assign]
    assert adm.release("h", [slot, budget, rate]) == 1
    assert reads == []
    # and everything is given back: the slot, the reservation, the holder's entries.
    assert adm.acquire("other", [slot], lease_ms=1000).admitted
    assert adm.usage(budget[0], budget[1])["budget"]["open_reservations"] == 0
    assert adm.client.zscore(adm.keys.holders(), "h") is None and not adm.client.exists(adm.keys.held("h"))
    # A release given fewer rules than the holder holds reads its held set and frees the rest.
    assert adm.acquire("h2", [budget, (rule_id("user:u", "*", "limit"), LimitRule(key="user:u", concurrency=3))],
                       lease_ms=1000).admitted
    assert adm.release("h2", [budget]) == 1 and reads == ["held"]
    assert adm.client.zscore(adm.keys.holders(), "h2") is None and not adm.client.exists(adm.keys.held("h2"))
