"""Poison runs (issue 13 item 7): a node or effect that kills its worker process is not sent
again forever. The sweep counts the expired leases of a dispatch (field ``n``, reset by
every commit) and at ``poison_after`` fails the run with a record, ``explain`` says POISONED.

Fast stories through ``Engine`` and the stub dispatcher (lost ticks stand in for dead
workers) on real Redis and fakeredis; the acceptance on real Celery workers at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from runtime import RunStatus
from stores.redis import RedisBackend
from workers.explain import Code, diagnose
from workers.fleet import explain_run, gather
from workers.registry import registry
from workers.settings import WorkerSettings
from workers.testing import DrainLimitReached, StubDispatcher, make_stub_engine

import support.celery_scenarios  # noqa: F401  (registers the workflows)
from support.celery_workers import WorkerGroup

pytestmark = pytest.mark.timeout(60)

MESSAGE = "Node 'start' lost its worker 2 times (the process died while running it); the run is failed as poisoned"


def stub_engine(store: RedisBackend, poison_after: int = 2) -> tuple[Any, StubDispatcher]:
    # (every step its own message: these tests lose messages one by one)
    return make_stub_engine(store, registry, WorkerSettings(tick_lease_s=0.2, poison_after=poison_after,
                                                            steps_per_task=1))


def lost(store: RedisBackend, run_id: str) -> int:
    return int(store.client.hget(store.keys.run(run_id), "n") or 0)


def lose_and_sweep(engine: Any, stub: StubDispatcher, store: RedisBackend, run_id: str) -> dict[str, int]:
    """Lose the run's queued tick (its worker died), wait out the lease, sweep."""
    [message] = [m for m in stub.pending if m.run_id == run_id]
    stub.drop(message)
    expires_ms = store.client.zscore(store.keys.leases(), run_id)
    while store.time_ms() <= expires_ms:
        time.sleep(0.02)
    return engine.sweep()


def deliver_one(engine: Any, stub: StubDispatcher) -> None:
    try:
        stub.drain(engine, max_messages=1)
    except DrainLimitReached:
        pass


def test_a_run_whose_worker_is_always_lost_is_failed_as_poisoned_and_retry_reopens_it(store):
    engine, stub = stub_engine(store)
    run_id = engine.create(registry.workflows.get_or_raise("poison"))
    # Given its first tick lost: the sweep sends it again and counts one lost delivery
    counts = lose_and_sweep(engine, stub, store, run_id)
    assert (counts["leases"], counts["timers"], counts["poisoned"]) == (1, 0, 0)
    assert lost(store, run_id) == 1
    d = explain_run(store, engine.settings, run_id)
    assert d.code in (Code.MOVING, Code.LEASE_EXPIRED, Code.NO_CONSUMER), d
    # When the second is lost too (poison_after=2), the sweep fails the run instead
    assert lose_and_sweep(engine, stub, store, run_id)["poisoned"] == 1
    assert stub.pending == []
    state = store.runs.load(run_id)
    assert state is not None and (state.status, state.error) == (RunStatus.FAILED, MESSAGE)
    last = store.ledger.list(run_id)[-1]
    assert (last["node_id"], last["status"], last["error"]) == ("start", "failed", MESSAGE)
    assert store.ledger.verify(run_id)["ok"]
    assert store.last_failure(run_id)["where"] == "poisoned"
    assert store.lease_ms(run_id) is None and lost(store, run_id) == 0
    d = explain_run(store, engine.settings, run_id)
    assert d.code is Code.POISONED and "lost its worker 2 times" in d.sentence and "retry" in d.action
    # and retry re-opens it like any failed run: it completes once its ticks arrive
    retried = engine.retry(run_id, reason="fixed the segfault", actor="ops")
    assert (retried.status, retried.current_node) == (RunStatus.RUNNING, "start")
    stub.run_until_quiet(engine)
    done = store.runs.load(run_id)
    assert done is not None and done.status == RunStatus.COMPLETED and done.output == {"survived": True}


def test_an_effect_that_kills_its_worker_fails_its_started_attempt(store):
    engine, stub = make_stub_engine(store, registry, WorkerSettings(tick_lease_s=0.2, effect_lease_s=0.2,
                                                                    poison_after=2))
    run_id = engine.create(registry.workflows.get_or_raise("llm"))
    deliver_one(engine, stub)  # the tick of node act: the LLM call's `started` record and its message
    [message] = stub.pending
    assert message.kind == "effect"
    lose_and_sweep(engine, stub, store, run_id)
    assert lose_and_sweep(engine, stub, store, run_id)["poisoned"] == 1
    state = store.runs.load(run_id)
    assert state is not None and state.status == RunStatus.FAILED
    assert state.error == ("Node 'act' (its llm_call effect) lost its worker 2 times (the process died while "
                           "running it); the run is failed as poisoned")
    started, failed = store.ledger.list(run_id)[-2:]
    assert (started["status"], failed["status"]) == ("started", "failed")
    assert failed["step_id"] == started["step_id"] and failed["effect"]["type"] == "llm_call"
    assert store.ledger.verify(run_id)["ok"]
    engine.retry(run_id, reason="provider fixed", actor="ops")
    stub.run_until_quiet(engine)
    assert store.runs.load(run_id).status == RunStatus.COMPLETED


def test_the_lease_expired_sentence_counts_lost_deliveries(store):
    engine, stub = make_stub_engine(store, registry, WorkerSettings(tick_lease_s=0.2, poison_after=5, steps_per_task=1))
    run_id = engine.create(registry.workflows.get_or_raise("poison"))
    lose_and_sweep(engine, stub, store, run_id)
    lose_and_sweep(engine, stub, store, run_id)
    [message] = stub.pending
    stub.drop(message)
    expires_ms = store.client.zscore(store.keys.leases(), run_id)
    while store.time_ms() <= expires_ms:
        time.sleep(0.02)
    facts = gather(store, engine.settings, run_id)
    assert (facts.lost, facts.poison_after) == (2, 5)
    d = diagnose(replace(facts, consumers=("worker-1",)))  # a worker consumes `ticks`, alive but losing them
    assert d.code is Code.LEASE_EXPIRED and d.sentence.endswith("; 2 of 5 deliveries lost"), d


def test_a_commit_in_between_resets_the_count(store):
    engine, stub = stub_engine(store)
    run_id = engine.create(registry.workflows.get_or_raise("chain"))
    lose_and_sweep(engine, stub, store, run_id)
    assert lost(store, run_id) == 1
    # One node commits: the count of the old dispatch is gone
    deliver_one(engine, stub)
    assert store.runs.load(run_id).current_node == "n1" and lost(store, run_id) == 0
    # so one more lost tick is the first of the new dispatch, not the second
    assert lose_and_sweep(engine, stub, store, run_id)["poisoned"] == 0
    stub.run_until_quiet(engine)
    assert store.runs.load(run_id).status == RunStatus.COMPLETED


def test_poison_after_zero_never_poisons(store):
    engine, stub = stub_engine(store, poison_after=0)
    run_id = engine.create(registry.workflows.get_or_raise("poison"))
    for _ in range(4):
        assert lose_and_sweep(engine, stub, store, run_id)["poisoned"] == 0
    assert lost(store, run_id) == 0  # not even counted
    stub.run_until_quiet(engine)
    assert store.runs.load(run_id).status == RunStatus.COMPLETED


def test_poison_after_is_a_setting():
    assert WorkerSettings().poison_after == 0  # off unless asked: a backlog must not fail healthy runs
    assert WorkerSettings.from_env({"ABSTRACTRUNTIME_POISON_AFTER": "0"}).poison_after == 0
    with pytest.raises(ValueError, match="poison_after"):
        WorkerSettings(poison_after=-1)


# -- real workers --------------------------------------------------------------------------------

CLI = str(Path(sys.executable).with_name("abstractruntime"))
TESTS_DIR = Path(__file__).resolve().parent


@pytest.mark.timeout(180)
def test_a_node_that_kills_its_worker_fails_the_run_as_poisoned_on_real_workers(redis_server, tmp_path):
    g = WorkerGroup(redis_server.url, tmp_path / "g", tick_lease_s=2, effect_lease_s=2, sweep_period_s=0.5,
                    poison_after=2)
    try:
        # Prefork, one child: os._exit ends the pool child only, and Celery starts another.
        g.start_worker("a", pool="prefork", concurrency=1)
        g.start_beat()
        client = g.client()
        poisoned = client.start("poison", vars={"fixed": str(tmp_path / "fixed")})
        healthy = client.start("chain")
        assert client.wait_for(poisoned, ("completed", "failed", "cancelled"), timeout=90).status == RunStatus.FAILED
        state = client.get_state(poisoned)
        assert state.current_node == "crash" and "lost its worker 2 times" in (state.error or "")
        last = client.get_ledger(poisoned)[-1]
        assert (last["node_id"], last["status"]) == ("crash", "failed") and "poisoned" in last["error"]
        done = client.wait_for(healthy, ("completed", "failed", "cancelled"), timeout=60)
        assert done.status == RunStatus.COMPLETED, done.error
        env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_") and k != "PYTHONPATH"}
        env.update(g.env, PYTHONPATH=str(TESTS_DIR))
        proc = subprocess.run([CLI, "explain", poisoned, "--json"], env=env, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["code"] == "POISONED"
        # After the fix, retry re-opens it and it completes on the same workers
        (tmp_path / "fixed").touch()
        client.retry(poisoned, reason="fixed", actor="ops")
        again = client.wait_for(poisoned, ("completed", "failed", "cancelled"), timeout=60)
        assert again.status == RunStatus.COMPLETED, again.error
    finally:
        g.close()
