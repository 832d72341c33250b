"""What only the Redis stores promise: atomic versioned commits, races, crashes, bad bytes."""

from __future__ import annotations

import threading

import pytest

from runtime import (
    CorruptRecordError,
    Effect,
    EffectOutcome,
    EffectType,
    RunState,
    RunStatus,
    Runtime,
    StepPlan,
    StepRecord,
    VersionConflict,
    WorkflowSpec,
    verify_ledger_chain,
)
from stores.redis import RedisBackend
from stores.redis.codec import ValueTooLarge

from support.backends import redis_backend


def fresh(redis_client, **kwargs) -> RedisBackend:
    return redis_backend(redis_client, **kwargs)


def twin(backend: RedisBackend, **kwargs) -> RedisBackend:
    """Another process's view of the same keys (its own cache)."""
    return RedisBackend(backend.client, prefix=backend.keys.prefix, **kwargs)


def a_run(run_id: str = "r1") -> RunState:
    return RunState.new(workflow_id="w", entry_node="a", run_id=run_id, vars={"n": 0})


def record_for(run: RunState, node: str) -> StepRecord:
    return StepRecord.start(run=run, node_id=node, effect=None).finish_success({"node": node})


@pytest.fixture
def redis_client(redis_server):
    return redis_server.client()


def test_a_stale_writer_is_refused_and_writes_nothing(redis_client):
    first = fresh(redis_client)
    first.runs.create(a_run())
    second = twin(first)
    mine, _ = first.load_versioned("r1")
    theirs, _ = second.load_versioned("r1")
    theirs.vars["n"] = 1
    second.runs.commit(theirs, [record_for(theirs, "b")])
    mine.vars["n"] = 99
    with pytest.raises(VersionConflict) as err:
        first.runs.commit(mine, [record_for(mine, "c")])
    assert (err.value.run_id, err.value.expected_version, err.value.actual_version) == ("r1", 1, 2)
    assert first.runs.load("r1").vars["n"] == 1
    assert [r["node_id"] for r in first.ledger.list("r1")] == ["b"]
    assert first.ledger.verify("r1")["ok"]


@pytest.mark.parametrize("sharing", ["two backends", "one backend, two threads"])
def test_two_writers_race_a_thousand_times_and_exactly_one_wins_each_round(redis_client, sharing):
    """The acceptance race: both load, both commit; one commit lands per round, the chain holds.
    Two processes have a backend each; two threads of one process share one."""
    base = fresh(redis_client)
    base.runs.create(a_run())
    writers = [twin(base), twin(base)] if sharing == "two backends" else [base, base]
    rounds = 1000
    barrier = threading.Barrier(2)
    wins = [[0] * rounds, [0] * rounds]
    errors: list[BaseException] = []

    def race(me: int) -> None:
        store = writers[me]
        try:
            for i in range(rounds):
                run, _ = store.load_versioned("r1")
                barrier.wait()  # both have loaded the same version
                run.vars["n"] = i
                run.vars["by"] = me
                try:
                    store.runs.commit(run, [record_for(run, f"round{i}-w{me}")])
                    wins[me][i] = 1
                except VersionConflict:
                    pass
                barrier.wait()  # nobody starts the next round early
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=race, args=(me,)) for me in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert all(wins[0][i] + wins[1][i] == 1 for i in range(rounds)), "exactly one commit per round"
    records = base.ledger.list("r1")
    assert len(records) == rounds
    assert [r["node_id"].split("-")[0] for r in records] == [f"round{i}" for i in range(rounds)]
    assert verify_ledger_chain(records)["ok"] and base.ledger.verify("r1")["ok"]
    _, version = base.load_versioned("r1")
    assert version == rounds + 1


def test_corrupt_state_names_the_run_and_key_and_other_runs_load(redis_client):
    backend = fresh(redis_client)
    backend.runs.create(a_run("good"))
    backend.runs.create(a_run("bad"))
    redis_client.hset(backend.keys.run("bad"), "s", b"\xc1\x00garbage")
    with pytest.raises(CorruptRecordError) as err:
        backend.runs.load("bad")
    assert "bad" in str(err.value) and backend.keys.run("bad") in str(err.value)
    assert backend.runs.load("good").run_id == "good"
    truncated = redis_client.hget(backend.keys.run("good"), "s")[:10]
    redis_client.hset(backend.keys.run("bad"), "s", truncated)
    with pytest.raises(CorruptRecordError, match="not valid msgpack"):
        backend.runs.load("bad")


def test_corrupt_ledger_entry_names_the_stream_entry(redis_client):
    backend = fresh(redis_client)
    run = a_run()
    backend.runs.create(run)
    backend.ledger.append(record_for(run, "a"))
    redis_client.xadd(backend.keys.ledger("r1"), {"r": b"\xff\xfe"})
    with pytest.raises(CorruptRecordError, match=r":ledger entry \d+-\d+"):
        backend.ledger.list("r1")


def test_values_over_the_limit_are_refused_before_writing(redis_client):
    backend = fresh(redis_client, max_value_bytes=2_000)
    run = a_run()
    backend.runs.create(run)
    run.vars["blob"] = "x" * 5_000
    with pytest.raises(ValueTooLarge, match="over the limit of 2000 bytes"):
        backend.runs.save(run)
    assert "blob" not in backend.runs.load("r1").vars
    big = StepRecord.start(run=run, node_id="a", effect=None).finish_success("y" * 5_000)
    with pytest.raises(ValueTooLarge):
        backend.ledger.append(big)
    assert backend.ledger.list("r1") == []


def test_same_records_give_the_same_hashes_as_the_in_memory_chain(redis_client):
    from runtime import HashChainedLedgerStore, InMemoryLedgerStore

    backend = fresh(redis_client)
    memory = HashChainedLedgerStore(InMemoryLedgerStore())
    run = a_run()
    for i in range(3):
        rec = record_for(run, f"n{i}")
        twin_rec = StepRecord.from_dict(rec.to_dict())
        backend.ledger.append(rec)
        memory.append(twin_rec)
    assert [r["record_hash"] for r in backend.ledger.list("r1")] == [r["record_hash"] for r in memory.list("r1")]


def test_indexes_follow_the_run(redis_client):
    backend = fresh(redis_client)
    ask = WorkflowSpec(workflow_id="ask", entry_node="a", nodes={
        "a": lambda run, ctx: StepPlan(node_id="a", next_node="b", effect=Effect(
            type=EffectType.ASK_USER, payload={"prompt": "?", "wait_key": "approve:42"})),
        "b": lambda run, ctx: StepPlan(node_id="b", complete_output={}),
    })
    rt = Runtime(run_store=backend.runs, ledger_store=backend.ledger)
    ids = [rt.start(workflow=ask) for _ in range(3)]
    for rid in ids:
        rt.tick(workflow=ask, run_id=rid)
    k = backend.keys
    assert backend.runs.runs_waiting_on("approve:42") == sorted(ids)
    assert redis_client.zcard(k.by_status("waiting")) == 3 and redis_client.zcard(k.by_status("running")) == 0
    rt.resume(workflow=ask, run_id=ids[0], wait_key="approve:42", payload="ok")
    rt.cancel_run(ids[1])
    assert backend.runs.runs_waiting_on("approve:42") == [ids[2]]
    assert redis_client.zcard(k.by_status("waiting")) == 1 and redis_client.zcard(k.by_wait_reason("user")) == 1
    assert [r.run_id for r in backend.runs.list_runs(status=RunStatus.COMPLETED)] == [ids[0]]
    assert [r.run_id for r in backend.runs.list_runs(status=RunStatus.CANCELLED)] == [ids[1]]
    assert redis_client.xlen(k.events()) >= 9


def test_an_effect_step_is_one_atomic_commit(redis_client):
    """On Redis, the outcome record and the state land together or not at all."""
    backend = fresh(redis_client)
    calls = []

    def tool(run, effect):
        calls.append(1)
        return EffectOutcome.completed({"ok": True})

    wf = WorkflowSpec(workflow_id="w", entry_node="a", nodes={
        "a": lambda run, ctx: StepPlan(node_id="a", next_node="b",
                                       effect=Effect(type=EffectType.TOOL_CALLS, payload={}, result_key="r")),
        "b": lambda run, ctx: StepPlan(node_id="b", complete_output={"r": run.vars["r"]}),
    })
    rt = Runtime(run_store=backend.runs, ledger_store=backend.ledger, effect_handlers={EffectType.TOOL_CALLS: tool})
    run_id = rt.start(workflow=wf)
    # Another writer moves the run while the effect executes: our commit must be refused whole.
    other = twin(backend)

    def meddling_tool(run, effect):
        theirs, _ = other.load_versioned(run_id)
        other.runs.save(theirs)
        return tool(run, effect)

    rt2 = Runtime(run_store=backend.runs, ledger_store=backend.ledger,
                  effect_handlers={EffectType.TOOL_CALLS: meddling_tool})
    with pytest.raises(VersionConflict):
        rt2.tick(workflow=wf, run_id=run_id)
    assert [r["status"] for r in backend.ledger.list(run_id)] == ["started"], "no outcome without its state"
    assert backend.ledger.find_effect_result(run_id, backend.ledger.list(run_id)[0]["idempotency_key"]) is None
    state = rt.tick(workflow=wf, run_id=run_id)
    assert state.status == RunStatus.COMPLETED and len(calls) == 2
    assert backend.ledger.verify(run_id)["ok"]


def test_commits_survive_sigkill_with_appendfsync_always(tmp_path):
    from support.redis_server import RedisServer

    server = RedisServer()
    server.start(appendonly=True, appendfsync="always")
    try:
        backend = fresh(server.client())
        def node(i):
            def handler(run, ctx):
                return StepPlan(node_id=f"n{i}", next_node=f"n{i + 1}",
                                effect=Effect(type=EffectType.TOOL_CALLS, payload={"i": i}, result_key=f"r{i}"))
            return handler

        wf = WorkflowSpec(workflow_id="w", entry_node="n0", nodes={f"n{i}": node(i) for i in range(40)})
        rt = Runtime(run_store=backend.runs, ledger_store=backend.ledger,
                     effect_handlers={EffectType.TOOL_CALLS: lambda run, eff: EffectOutcome.completed(eff.payload)})
        run_id = rt.start(workflow=wf)
        state = rt.tick(workflow=wf, run_id=run_id, max_steps=25)
        commits = 25
        assert state.current_node == "n25"
        server.kill()
        server.restart()
        again = RedisBackend(server.client(), prefix=backend.keys.prefix)
        run, version = again.load_versioned(run_id)
        assert version == commits + 1 and run.current_node == "n25" and run.vars["r24"] == {"i": 24}
        records = again.ledger.list(run_id)
        assert len(records) == 2 * commits and again.ledger.verify(run_id)["ok"]
    finally:
        server.stop()


def test_backend_from_settings_uses_prefix_and_limit(redis_server):
    from stores.redis import RedisSettings

    backend = RedisBackend.from_settings(RedisSettings(url=redis_server.url, prefix="fromsettings",
                                                       max_value_bytes=4096))
    assert backend.keys.run("x") == "fromsettings:{x}:run" and backend.max_value_bytes == 4096
    backend.runs.create(a_run("x"))
    assert backend.runs.load("x").run_id == "x"


def test_events_can_be_followed_with_a_blocking_read(redis_client):
    backend = fresh(redis_client)
    seen: list = []
    ready = threading.Event()

    def follow():
        ready.set()
        last = "$"
        while len(seen) < 3:
            events = backend.follow_events(last_id=last, block_ms=5000)
            if not events:
                break
            seen.extend(events)
            last = events[-1][0]

    t = threading.Thread(target=follow)
    t.start()
    ready.wait()
    import time

    time.sleep(0.2)  # let the XREAD block before the commits
    run = a_run()
    backend.runs.create(run)
    run.vars["n"] = 1
    backend.runs.save(run)
    run.status = RunStatus.COMPLETED
    backend.runs.save(run)
    t.join(10)
    assert [(e["run_id"], e["status"], e["v"]) for _, e in seen] == [
        ("r1", "running", "1"), ("r1", "running", "2"), ("r1", "completed", "3")]


def test_redis_going_away_mid_run_is_retried_then_reported_without_partial_commits(tmp_path):
    import time

    from stores.redis import RedisSettings, RedisUnavailable, connect

    from support.redis_server import RedisServer

    server = RedisServer()
    server.start(appendonly=True, appendfsync="always")
    try:
        settings = RedisSettings(url=server.url, retry_attempts=6, retry_backoff_base_s=0.1,
                                 retry_backoff_max_s=1.0, socket_timeout_s=2, connect_timeout_s=1)
        backend = RedisBackend(connect(settings), prefix="outage")
        run = a_run()
        backend.runs.create(run)

        # A short outage: the commit waits it out through the redis_client's retries.
        server.kill()
        restarter = threading.Timer(0.4, server.restart)
        restarter.start()
        run.vars["n"] = 1
        backend.runs.commit(run, [record_for(run, "during-outage")])
        restarter.join()
        assert backend.runs.load("r1").vars["n"] == 1

        # A long outage: a clear error naming the server, and nothing half-written.
        server.kill()
        run.vars["n"] = 2
        started = time.monotonic()
        with pytest.raises(RedisUnavailable) as err:
            backend.runs.commit(run, [record_for(run, "lost")])
        assert "127.0.0.1" in str(err.value) and time.monotonic() - started < 30
        server.restart()
        after = RedisBackend(server.client(), prefix="outage")
        stored, version = after.load_versioned("r1")
        assert stored.vars["n"] == 1 and version == 2
        assert [r["node_id"] for r in after.ledger.list("r1")] == ["during-outage"]
        assert after.ledger.verify("r1")["ok"]
    finally:
        server.stop()


def test_a_retried_commit_whose_reply_was_lost_is_applied_once(redis_client):
    """The token makes a re-sent script call a no-op that reports success."""
    backend = fresh(redis_client)
    run = a_run()
    backend.runs.create(run)
    run.vars["n"] = 5
    rec = record_for(run, "once")
    sent = {}
    original = backend._commit_script

    def send_twice(keys, args):
        first = original(keys=keys, args=args)
        sent["again"] = original(keys=keys, args=args)  # as if the reply was lost and redis-py retried
        return first

    backend._commit_script = send_twice
    backend.runs.commit(run, [rec])
    assert sent["again"][0] == 1
    assert [r["node_id"] for r in backend.ledger.list("r1")] == ["once"]
    assert backend.load_versioned("r1")[1] == 2


def test_a_ledger_entry_of_an_unknown_format_is_refused_naming_it(redis_client):
    import msgpack

    backend = fresh(redis_client)
    run = a_run()
    backend.ledger.append(record_for(run, "a"))
    redis_client.xadd(backend.keys.ledger("r1"), {"r": msgpack.packb({"node_id": "b"})})
    with pytest.raises(CorruptRecordError, match="not a ledger record of format 1"):
        backend.ledger.list("r1")


def test_stored_records_are_compact_and_read_back_whole(redis_client):
    backend = fresh(redis_client)
    run = a_run()
    rec = record_for(run, "a")
    backend.ledger.append(rec)
    (entry_id, fields), = redis_client.xrange(backend.keys.ledger("r1"))
    assert len(fields[b"r"]) < len(__import__("msgpack").packb(rec.to_dict()))
    assert backend.ledger.list("r1") == [rec.to_dict()]


def test_on_cluster_one_script_would_cross_slots_so_a_commit_is_split(redis_cluster_server):
    """On Redis Cluster the single-script commit is refused (CROSSSLOT); cluster mode commits
    the run's slot first, then the index slot, and every index still answers."""
    import redis as redis_py

    redis_client = redis_cluster_server.client()
    standalone = fresh(redis_client)
    with pytest.raises(redis_py.ResponseError, match="CROSSSLOT|hash to the same slot"):
        standalone.runs.create(a_run("r1"))

    backend = fresh(redis_client, cluster=True)
    wf = WorkflowSpec(workflow_id="ask", entry_node="a", nodes={
        "a": lambda run, ctx: StepPlan(node_id="a", next_node="b", effect=Effect(
            type=EffectType.ASK_USER, payload={"prompt": "?", "wait_key": "k"})),
        "b": lambda run, ctx: StepPlan(node_id="b", complete_output={}),
    })
    rt = Runtime(run_store=backend.runs, ledger_store=backend.ledger)
    run_id = rt.start(workflow=wf)
    rt.tick(workflow=wf, run_id=run_id)
    assert backend.runs.runs_waiting_on("k") == [run_id]
    assert [r.run_id for r in backend.runs.list_runs(status=RunStatus.WAITING)] == [run_id]
    rt.resume(workflow=wf, run_id=run_id, wait_key="k", payload=1)
    assert backend.runs.runs_waiting_on("k") == []
    assert [r.run_id for r in backend.runs.list_runs(status=RunStatus.COMPLETED)] == [run_id]
    assert backend.runs.list_runs(status=RunStatus.WAITING) == []
    assert backend.ledger.verify(run_id)["ok"]
