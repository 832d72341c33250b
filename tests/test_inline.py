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
    queued_seen, queued, queued_deliveries, _ = play(store, reg)
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
    queued_seen, _, _, _ = play(store, reg)
    inline_seen, _, _, _ = play(store, reg, steps_per_task=64)
    assert inline_seen == queued_seen and "the tool broke" in str(inline_seen)


def test_settings_refuse_unknown_inline_kinds():
    with pytest.raises(ValueError, match="inline_effects must name effect kinds"):
        WorkerSettings(inline_effects="tools,timers")
    with pytest.raises(ValueError, match="steps_per_task must be a whole number of 1 or more"):
        WorkerSettings(steps_per_task=0)
    assert WorkerSettings.from_env({"ABSTRACTRUNTIME_STEPS_PER_TASK": "8",
                                    "ABSTRACTRUNTIME_INLINE_EFFECTS": "tools"}).inline_effects == ("tools",)
