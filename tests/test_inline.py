"""Inline effects with continuation (issue 18, part 1; ``workers/engine/inline.py``), through the
stub dispatcher on a real Redis and fakeredis: a task runs its run's next steps itself, up to a
budget, with the same ledger as when every step is its own task. (The driver scenarios run both
ways in ``test_engine_stub.py``; a worker killed in an inline call, in ``test_inline_workers.py``.)
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from runtime import RunStatus
from workers.registry import Registry
from workers.settings import WorkerSettings
from workers.testing import make_stub_engine

from support.backends import redis_backend
from support.driver_compare import comparable
from support.scenarios import tool_loop

pytestmark = pytest.mark.timeout(60)


def registry_with(turns: int = 6, *, inline: bool = True, tool: Any = None) -> Registry:
    reg = Registry()
    reg.register_tool("fast", tool or (lambda **kw: {"ok": True, **kw}), inline=inline)
    reg.register_workflow(tool_loop(turns, {"tool_calls": [{"name": "fast", "arguments": {"q": 1}, "call_id": "c"}]}))
    return reg


def play(store: Any, reg: Registry, **settings: Any) -> tuple[Any, Any, list[Any], Any]:
    """Run ``loop`` under the run id ``r-1``, on a prefix of its own: (its comparable state and
    ledger, its state, the stub's deliveries, the engine)."""
    backend = redis_backend(store.client)
    engine, stub = make_stub_engine(backend, reg, WorkerSettings(**settings))
    run_id = engine.create(reg.workflows.get_or_raise("loop"), run_id="r-1")
    deliveries = stub.run_until_quiet(engine)
    state = backend.runs.load(run_id)
    assert backend.ledger.verify(run_id)["ok"]
    return comparable(state, backend.ledger.list(run_id)), state, deliveries, engine


def test_inline_tools_run_in_the_task_that_asked_with_the_same_ledger(store):
    reg = registry_with(6)
    queued_seen, queued, queued_deliveries, _ = play(store, reg, steps_per_task=1)
    inline_seen, inline, inline_deliveries, engine = play(store, reg, steps_per_task=64)
    assert queued.status == inline.status == RunStatus.COMPLETED
    assert inline_seen == queued_seen
    # queued: a tick and an effect task per turn; inline: the first tick's task ran everything
    assert len(queued_deliveries) >= 12 and len(inline_deliveries) == 1
    assert engine.continuation.inline_steps == len(queued_deliveries) - 1


def test_a_tool_not_marked_inline_goes_to_its_queue(store):
    reg = registry_with(2, inline=False)
    _, state, deliveries, engine = play(store, reg, steps_per_task=64)
    assert state.status == RunStatus.COMPLETED
    assert [d.message.kind for d in deliveries].count("effect") == 2  # each call went through the tools queue
    # unless the worker runs every tool inline
    _, state, deliveries, _ = play(store, reg, steps_per_task=64, inline_effects="tools")
    assert state.status == RunStatus.COMPLETED and len(deliveries) == 1


def test_the_budget_hands_the_run_back_and_others_move_meanwhile(store):
    reg = registry_with(10)
    engine, stub = make_stub_engine(store, reg, WorkerSettings(steps_per_task=5))
    long_run = engine.create(reg.workflows.get_or_raise("loop"))
    other = engine.create(reg.workflows.get_or_raise("loop"))
    deliveries = stub.run_until_quiet(engine)
    order = [d.message.run_id for d in deliveries]
    # each task ran 5 steps of its run, then queued the rest behind the other run's message
    assert order[:4] == [long_run, other, long_run, other]
    assert order.index(other) < len(order) - 1 - order[::-1].index(long_run)  # the other moved before the first ended
    for rid in (long_run, other):
        assert store.runs.load(rid).status == RunStatus.COMPLETED
    assert len(deliveries) == 2 * -(-(10 * 3) // 5)  # 30 steps a run (tick, effect, check per turn), 5 per task


def test_the_time_budget_hands_the_run_back(store):
    def slow(**kw: Any) -> str:
        time.sleep(0.02)
        return "done"

    reg = registry_with(3, tool=slow)
    _, state, deliveries, _ = play(store, reg, steps_per_task=64, task_budget_ms=1)
    assert state.status == RunStatus.COMPLETED
    assert len(deliveries) > 1  # past the budget after its first inline call, the task handed the run back


def test_an_inline_tool_that_raises_follows_the_effect_policy(store):
    def broken(**kw: Any) -> Any:
        raise ValueError("the tool broke")

    reg = registry_with(2, tool=broken)
    queued_seen, _, _, _ = play(store, reg, steps_per_task=1)
    inline_seen, _, _, _ = play(store, reg, steps_per_task=64)
    assert inline_seen == queued_seen and "the tool broke" in str(inline_seen)


def test_settings_refuse_unknown_inline_kinds():
    with pytest.raises(ValueError, match="inline_effects must name effect kinds"):
        WorkerSettings(inline_effects="tools,timers")
    with pytest.raises(ValueError, match="steps_per_task must be a whole number of 1 or more"):
        WorkerSettings(steps_per_task=0)
    assert WorkerSettings.from_env({"ABSTRACTRUNTIME_STEPS_PER_TASK": "8",
                                    "ABSTRACTRUNTIME_INLINE_EFFECTS": "tools"}).inline_effects == ("tools",)


# -- one round trip where there were two: the next step reads what the last commit wrote --------


def test_a_commit_keeps_what_it_wrote_for_the_next_step_once(store):
    """``RedisBackend.commit(keep_loaded=True)`` then ``take_loaded``: what ``load_for_driver``
    would read, taken once, only by the run it is of, and dropped by a refused commit."""
    reg = registry_with(1)
    engine, stub = make_stub_engine(store, reg, WorkerSettings())
    run_id = engine.create(reg.workflows.get_or_raise("loop"))
    state, v = store.runs.load(run_id), int(store.client.hget(store.keys.run(run_id), "v"))
    from stores.redis.dispatch import Dispatch

    v2 = store.commit(state, [], expected_version=v, dispatch=Dispatch.tick(), lease_ms=5000, keep_loaded=True)
    assert store.take_loaded("someone-else") is None
    kept, loaded = store.take_loaded(run_id), store.load_for_driver(run_id)
    assert kept is not None and loaded is not None
    assert kept.run.to_dict() == loaded.run.to_dict() and kept.run is not state
    assert (kept.version, kept.token, kept.lost, kept.regranted_ms) == (v2, loaded.token, 0, None)
    assert kept.dispatch is not None and kept.dispatch.to_wire() == loaded.dispatch.to_wire()
    assert 0 <= loaded.now_ms - kept.now_ms < 5000  # the Redis clock, read by the commit script
    assert store.take_loaded(run_id) is None  # once
    # A commit without keep_loaded keeps nothing; a refused one drops what was kept
    store.commit(state, [], expected_version=v2, keep_loaded=True)
    store.commit(state, [], expected_version=v2 + 1)
    assert store.take_loaded(run_id) is None
    store.commit(state, [], expected_version=v2 + 2, keep_loaded=True)
    from runtime import VersionConflict

    with pytest.raises(VersionConflict):
        store.commit(state, [], expected_version=1)
    assert store.take_loaded(run_id) is None


def test_inline_steps_read_the_run_from_the_last_commit_not_from_redis(redis_server):
    """A step run inline costs its commit and no load: fewer Redis commands per step (the
    commit script's own HMGET and TIME aside), and the same ledger."""
    server = redis_server.client()

    def commands() -> dict[str, int]:
        return {k.removeprefix("cmdstat_"): v["calls"] for k, v in server.info("commandstats").items()}

    def run(**settings: Any) -> tuple[Any, dict[str, int], int]:
        reg, backend = registry_with(10), redis_backend(server)
        engine, stub = make_stub_engine(backend, reg, WorkerSettings(**settings))
        before = commands()
        run_id = engine.create(reg.workflows.get_or_raise("loop"), run_id="r-1")
        deliveries = stub.run_until_quiet(engine)
        after = commands()
        assert backend.ledger.verify(run_id)["ok"]
        seen = comparable(backend.runs.load(run_id), backend.ledger.list(run_id))
        return seen, {k: after[k] - before.get(k, 0) for k in after}, len(deliveries)

    queued_seen, queued, tasks = run(steps_per_task=1)
    inline_seen, inline, inline_tasks = run(steps_per_task=64)
    assert inline_seen == queued_seen and inline_tasks == 1 and tasks == 30
    # each task loads its run once (an HMGET and a TIME, pipelined): 30 loads queued, 1 inline;
    # every step still commits (one EVALSHA, whose script reads the run with one HMGET)
    assert inline["evalsha"] == queued["evalsha"]
    assert queued["hmget"] - inline["hmget"] == tasks - inline_tasks
    assert queued["time"] - inline["time"] == tasks - inline_tasks


def test_another_writer_between_inline_steps_wins(store):
    """The state a step reads from the last commit is checked like a loaded one: a cancel
    committed while an inline tool runs stops the run there, with nothing written over it."""
    from stores.redis import RedisBackend

    holder: dict[str, Any] = {}

    def cancels(**kw: Any) -> str:  # an operator cancels the run while its tool runs
        operator, _ = make_stub_engine(RedisBackend(store.client, prefix=store.keys.prefix), holder["reg"],
                                       WorkerSettings())
        operator.cancel(holder["run"], reason="stop", actor="op")
        return "done"

    reg = holder["reg"] = registry_with(3, tool=cancels)
    engine, stub = make_stub_engine(store, reg, WorkerSettings(steps_per_task=64))
    run_id = holder["run"] = engine.create(reg.workflows.get_or_raise("loop"))
    assert len(stub.run_until_quiet(engine)) == 1  # (the tool ran inline, in the first task)
    assert store.runs.load(run_id).status == RunStatus.CANCELLED
    assert store.ledger.verify(run_id)["ok"]
    kinds = [(r.get("effect") or {}).get("type") for r in store.ledger.list(run_id)]
    # the tool's started record, then the cancel: its outcome was not committed over it
    assert kinds[-2:] == ["tool_calls", "operator_cancel"], kinds
