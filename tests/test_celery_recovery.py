"""Recovery on real workers: killed processes, lost messages, lost countdowns, a stopped beat.

Redis state is the truth and messages only nudge it: whatever is lost is found again
through the lease and timer indexes by the sweep that beat runs. Timings are printed for
the closing note; the tests assert outcomes, with deadlines far above the expected times.
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime, timedelta, timezone

import pytest

from runtime import RunStatus

from support.celery_workers import WorkerGroup

TERMINAL = ("completed", "failed", "cancelled")


def _versions(client, run_id: str) -> int:
    return int(client.backend.client.hget(client.backend.keys.run(run_id), "v"))


def _check_exactly_once(client, run_id: str) -> None:
    """Completed, each transition committed once, the effect applied once, the chain intact."""
    state = client.get_state(run_id)
    assert state.status == RunStatus.COMPLETED, (run_id, state.status, state.error)
    assert state.output["visited"] == 2
    assert state.output["llm"]["attempt"] == 1
    ledger = client.get_ledger(run_id)
    assert [(r["node_id"], r["status"]) for r in ledger] == [("n2", "started"), ("n2", "completed"),
                                                             ("n3", "completed")]
    completed = [r["idempotency_key"] for r in ledger if r["status"] == "completed" and r["idempotency_key"]]
    assert len(completed) == len(set(completed)) == 1
    # create, n0, n1, n2 (effect sent), effect landed, n3: six commits, no seventh.
    assert _versions(client, run_id) == 6
    assert client.verify(run_id)["ok"]


@pytest.mark.timeout(420)
def test_sigkill_inside_ticks_and_effects(redis_server, tmp_path):
    """20 workers killed inside a node and 20 inside an LLM call, across 100 runs."""
    g = WorkerGroup(redis_server.url, tmp_path / "g", tick_lease_s=3, effect_lease_s=3, sweep_period_s=0.5)
    try:
        # Prefork: SIGKILL takes down the pool process running the task; the message goes
        # back to the queue (acks_late + reject_on_worker_lost) and the sweep covers the rest.
        g.start_worker("a", pool="prefork", concurrency=1)
        g.start_worker("b", pool="prefork", concurrency=1)
        g.start_beat()
        client = g.client()
        ids = []
        for i in range(100):
            vars = {}
            if i % 5 == 1:
                vars["die_tick"] = str(tmp_path / f"tick-{i}")
            elif i % 5 == 3:
                vars["die_effect"] = str(tmp_path / f"effect-{i}")
            ids.append(client.start("crashy", vars=vars))
        t0 = time.monotonic()
        for run_id in ids:
            client.wait_for(run_id, TERMINAL, timeout=240)
        took = time.monotonic() - t0
        kills = sum(1 for p in tmp_path.iterdir() if p.name.startswith(("tick-", "effect-")))
        assert kills == 40  # every planned kill happened
        for run_id in ids:
            _check_exactly_once(client, run_id)
        print(f"\n100 runs, 40 SIGKILLs (20 in a node, 20 in an effect): all completed in {took:.1f}s")
    finally:
        g.close()


@pytest.mark.timeout(180)
def test_a_lost_tick_and_a_lost_effect_message_are_sent_again_by_the_sweep(redis_server, tmp_path):
    lease, period = 2.0, 0.5
    g = WorkerGroup(redis_server.url, tmp_path / "g", tick_lease_s=lease, effect_lease_s=lease,
                    sweep_period_s=period)
    try:
        client = g.client()
        broker = g.broker()
        # A tick message, consumed and never run: taken off the queue before any worker is up.
        lost_tick = client.start("chain")
        assert broker.llen("ticks") == 1
        broker.delete("ticks")
        dropped_tick_at = time.monotonic()
        g.start_worker("ticks", queues="ticks,timers,maintenance")
        g.start_beat()
        # An effect message, the same way: no worker consumes `llm` yet.
        lost_effect = client.start("llm")
        deadline = time.monotonic() + 30
        while broker.llen("llm") < 1:
            assert time.monotonic() < deadline, "the effect message never reached the llm queue"
            time.sleep(0.01)
        broker.delete("llm")
        dropped_effect_at = time.monotonic()
        g.start_worker("llm", queues="llm")

        state = client.wait_for(lost_tick, TERMINAL, timeout=60)
        tick_recovered = time.monotonic() - dropped_tick_at
        assert state.status == RunStatus.COMPLETED and state.output == {"visited": 5}
        state = client.wait_for(lost_effect, TERMINAL, timeout=60)
        effect_recovered = time.monotonic() - dropped_effect_at
        assert state.status == RunStatus.COMPLETED and state.vars["llm"]["content"] == "olleh"
        # Recovered by the sweep: its log names both runs.
        log = g.log("ticks")
        assert f"lease of run {lost_tick} expired" in log and f"lease of run {lost_effect} expired" in log
        print(f"\nlost tick recovered in {tick_recovered:.2f}s, lost effect in {effect_recovered:.2f}s "
              f"(lease {lease}s + sweep period {period}s = {lease + period}s; worker start-up included)")
        # Within the lease plus one sweep period, with room for process start-up on a busy machine.
        assert effect_recovered < lease + period + 10
    finally:
        g.close()


def _until(seconds: float) -> tuple[str, float]:
    when = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    return when.isoformat(), when.timestamp()


@pytest.mark.timeout(180)
def test_200_timers_wake_on_time_and_never_early(redis_server, tmp_path):
    g = WorkerGroup(redis_server.url, tmp_path / "g")
    try:
        g.start_worker("w", pool="prefork", concurrency=2)
        g.start_beat()
        client = g.client()
        runs = []
        for _ in range(200):
            until, ts = _until(2.0)
            runs.append((client.start("sleep_until", vars={"until": until}), ts))
        lateness = []
        for run_id, ts in runs:
            state = client.wait_for(run_id, TERMINAL, timeout=60)
            assert state.status == RunStatus.COMPLETED, state.error
            woke = state.output["woke_at"]
            assert woke >= ts, f"run {run_id} woke {ts - woke:.3f}s early"
            lateness.append(woke - ts)
        lateness.sort()
        p50, p99 = statistics.median(lateness), lateness[int(len(lateness) * 0.99) - 1]
        print(f"\n200 wait_until runs: lateness p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
              f"max {lateness[-1] * 1000:.1f} ms")
    finally:
        g.close()


@pytest.mark.timeout(180)
def test_lost_countdowns_and_a_stopped_beat_are_covered_by_the_sweep(redis_server, tmp_path):
    g = WorkerGroup(redis_server.url, tmp_path / "g", sweep_period_s=0.5)
    try:
        g.start_worker("ticks", queues="ticks")  # nobody consumes `timers`, and beat is not running
        client = g.client()
        broker = g.broker()
        runs = []
        for _ in range(30):
            until, ts = _until(1.0)
            runs.append((client.start("sleep_until", vars={"until": until}), ts))
        for run_id, _ts in runs:
            assert client.wait_for(run_id, timeout=30).status == RunStatus.WAITING
        assert broker.llen("timers") == 30
        broker.delete("timers")  # every countdown lost
        time.sleep(1.5)
        # Past due, nothing wakes them without beat.
        assert all(client.get_state(r).status == RunStatus.WAITING for r, _ in runs)
        g.start_beat()
        g.start_worker("timers", queues="timers,maintenance")
        for run_id, ts in runs:
            state = client.wait_for(run_id, TERMINAL, timeout=60)
            assert state.status == RunStatus.COMPLETED and state.output["woke_at"] >= ts
        assert "abstractruntime.sweep" in g.log("timers")
    finally:
        g.close()

