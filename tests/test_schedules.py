"""Schedules (``workers/schedules.py``, ``workers/engine/schedules.py``): refused when malformed,
and fired once per time however many sweeps run, with each overlap policy and a catch-up window.

In process: three engines on one store stand for three beats' sweeps (the stub dispatcher
carries the messages), on a real redis-server, with schedules every second and real time.
The same on worker and beat processes: ``tests/test_schedules_acceptance.py``.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from runtime import RunStatus
from runtime.errors import WorkflowNotRegistered
from stores.redis.schedules import ScheduleExists
from workers.client import Client
from workers.registry import registry
from workers.schedules import InvalidSchedule, Schedule, UnknownSchedule, fire_times, run_id_for
from workers.settings import WorkerSettings
from workers.testing import StubDispatcher, make_stub_engine

import support.celery_scenarios  # noqa: F401  (registers chain and wait_event)

pytestmark = pytest.mark.timeout(60)

EVERY_SECOND = "* * * * * *"


@pytest.fixture
def store(redis_server: Any) -> Any:
    """A real redis-server only (these tests wait on the clock; fakeredis would double the wait)."""
    from support.backends import redis_backend

    return redis_backend(redis_server.client())


@pytest.fixture
def beats(store: Any) -> tuple[Client, list[tuple[Any, StubDispatcher]]]:
    """A client and three engines (the sweeps of three beats) on one store."""
    client = Client(WorkerSettings(), backend=store, dispatcher=StubDispatcher())
    return client, [make_stub_engine(store, registry, WorkerSettings()) for _ in range(3)]


def sweep_for(beats: list[tuple[Any, StubDispatcher]], seconds: float, period: float = 0.2) -> None:
    """Every beat's sweep fires the due schedules every ``period`` for ``seconds``; their runs run."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for engine, stub in beats:
            engine.fire_schedules()
            stub.run_until_quiet(engine)
        time.sleep(period)


def schedule_runs(client: Client, name: str) -> list[str]:
    return sorted(r.run_id for r in client.list_runs(limit=10_000) if r.run_id.startswith(f"schedule:{name}:"))


@pytest.mark.parametrize("kwargs, field", [
    ({"cron": "61 * * * *"}, "cron"),
    ({"cron": "* * *"}, "cron"),
    ({"cron": ""}, "cron"),
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"overlap": "queue"}, "overlap"),
    ({"catchup_s": -1}, "catchup_s"),
    ({"name": "has space"}, "name"),
    ({"vars": [1]}, "vars"),
])
def test_a_malformed_schedule_is_refused_naming_the_field(kwargs, field):
    with pytest.raises(InvalidSchedule) as err:
        Schedule(**{"name": "s", "cron": "* * * * *", "workflow_id": "chain", **kwargs})
    assert err.value.field == field and f"schedule: {field}:" in str(err.value)


def test_an_unknown_workflow_or_a_taken_name_is_refused_and_nothing_is_stored(beats):
    client, _ = beats
    with pytest.raises(WorkflowNotRegistered):
        client.add_schedule("s1", EVERY_SECOND, "no_such_workflow")
    assert client.schedules() == []
    client.add_schedule("s1", EVERY_SECOND, "chain")
    with pytest.raises(ScheduleExists, match="--replace"):
        client.add_schedule("s1", "* * * * *", "chain")
    assert client.schedules()[0]["cron"] == EVERY_SECOND
    with pytest.raises(UnknownSchedule):
        client.pause_schedule("nope")


def test_three_sweeps_start_each_fire_once_and_pause_stops_them(beats):
    client, engines = beats
    added = client.add_schedule("tick", EVERY_SECOND, "chain", vars={"x": 1})
    first = added["next_fire"]
    sweep_for(engines, 3.3)
    paused_at = client.backend.time_ms()
    client.pause_schedule("tick")
    sweep_for(engines, 1.5)
    runs = schedule_runs(client, "tick")
    # exactly the fire times from the first to the pause, each once (the run id is the time)
    from runtime._clock import epoch_ms

    start = epoch_ms(first) - 1
    expected = []
    for t in fire_times(EVERY_SECOND, "UTC", start):
        if t > paused_at:
            break
        expected.append(run_id_for("tick", t))
    assert len(expected) >= 3 and runs in (expected, expected[:-1])  # the last may fall due as it pauses
    state = client.get_state(runs[0])
    assert state.status == RunStatus.COMPLETED
    assert state.vars["_schedule"]["name"] == "tick" and state.vars["x"] == 1
    listed = client.schedules()[0]
    assert listed["paused"] and listed["fires"] == len(runs) and listed["last_run_id"] == runs[-1]


def test_after_beats_were_down_only_the_fires_in_the_catchup_window_run(beats):
    client, engines = beats
    client.add_schedule("late", EVERY_SECOND, "chain", catchup_s=1.5)
    time.sleep(4.2)  # no sweep: about four fires missed
    sweep_for(engines, 0.5)
    runs = schedule_runs(client, "late")
    listed = client.schedules()[0]
    assert 1 <= len(runs) <= 2 and listed["missed"] >= 2  # only the fires of the last 1.5 s
    now = client.backend.time_ms()
    for rid in runs:
        scheduled = client.get_state(rid).vars["_schedule"]["scheduled_at"]
        from runtime._clock import epoch_ms

        assert now - epoch_ms(scheduled) <= 2500


def test_skip_never_starts_a_second_run_while_one_is_active(beats):
    client, engines = beats
    client.add_schedule("one", EVERY_SECOND, "wait_event", overlap="skip")
    sweep_for(engines, 3.2)
    runs = schedule_runs(client, "one")
    assert len(runs) == 1 and client.get_state(runs[0]).status == RunStatus.WAITING
    assert client.schedules()[0]["skipped"] >= 2
    client.emit("evt:go", {"v": 1})
    engines[0][1].run_until_quiet(engines[0][0])  # (the client's stub) - the run completes through any engine
    client.engine.dispatcher.run_until_quiet(client.engine)  # type: ignore[attr-defined]
    assert client.get_state(runs[0]).status == RunStatus.COMPLETED
    sweep_for(engines, 1.3)
    assert len(schedule_runs(client, "one")) == 2  # the next fire after it ended


def test_buffer_one_starts_one_buffered_fire_when_the_active_run_ends(beats):
    client, engines = beats
    client.add_schedule("buf", EVERY_SECOND, "wait_event", overlap="buffer_one")
    sweep_for(engines, 3.2)
    assert len(schedule_runs(client, "buf")) == 1
    listed = client.schedules()[0]
    assert listed["buffered_fire"] is not None and listed["skipped"] >= 1
    buffered = listed["buffered_fire"]
    client.emit("evt:go", {"v": 1})
    client.engine.dispatcher.run_until_quiet(client.engine)  # type: ignore[attr-defined]
    sweep_for(engines, 0.5)  # the buffered fire starts at the next sweep; the next fires are buffered again
    runs = schedule_runs(client, "buf")
    from runtime._clock import epoch_ms

    assert run_id_for("buf", epoch_ms(buffered)) in runs and len(runs) == 2


def test_cancel_other_cancels_the_active_run_for_the_new_fire(beats):
    client, engines = beats
    client.add_schedule("fresh", EVERY_SECOND, "wait_event", overlap="cancel_other")
    sweep_for(engines, 2.3)
    runs = schedule_runs(client, "fresh")
    assert len(runs) >= 2
    states = [client.get_state(r) for r in runs]
    assert [s.status for s in states[:-1]] == [RunStatus.CANCELLED] * (len(runs) - 1)
    assert states[-1].status == RunStatus.WAITING
    cancel = [r for r in client.get_ledger(runs[0]) if (r["effect"] or {}).get("type") == "operator_cancel"]
    assert cancel and cancel[0]["actor_id"] == "schedule:fresh"


def test_trigger_and_backfill_never_run_a_fire_twice(beats):
    client, engines = beats
    added = client.add_schedule("bf", EVERY_SECOND, "chain")
    sweep_for(engines, 2.2)
    client.pause_schedule("bf")
    ran = schedule_runs(client, "bf")
    from runtime._clock import epoch_ms

    start = epoch_ms(added["next_fire"]) - 3000
    end = epoch_ms(added["next_fire"]) + 1000
    out = client.backfill_schedule("bf", _iso(start), _iso(end))
    assert out["fires"] == 5 and out["existing"] == len([r for r in ran if r <= run_id_for("bf", end)])
    again = client.backfill_schedule("bf", _iso(start), _iso(end))
    assert again["started"] == [] and again["existing"] == 5
    rid = client.trigger_schedule("bf")
    assert rid.endswith(":trigger") and client.get_state(rid).workflow_id == "chain"
    with pytest.raises(InvalidSchedule, match="to: is before from"):
        client.backfill_schedule("bf", _iso(end), _iso(start))


def test_the_sweep_fires_schedules(beats):
    client, engines = beats
    client.add_schedule("sw", EVERY_SECOND, "chain")
    time.sleep(1.1)
    counts = engines[0][0].sweep()
    assert counts.get("schedule_started", 0) >= 1


def _iso(ms: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat()
