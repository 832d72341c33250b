"""The stuck-run detector: which runs the sweep lists as stuck, under which cause, and when not.

First the classification on constructed facts (fast, pure); then the detector through the
stub dispatcher (``workers.testing``) on a real redis-server and on fakeredis: windows of the
indexes, looks, ``run.stuck`` / ``run.unstuck`` events, the CLI's listing and doctor's count,
and the cost of a sweep, which does not grow with the runs that are fine.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from click.testing import CliRunner

from runtime import Effect, EffectType
from workers.explain import Code, Facts
from workers.registry import Registry
from workers.settings import WorkerSettings
from workers.stuck import CAUSES, classify, stuck_counts, stuck_runs, threshold_ms
from workers.testing import make_stub_engine

from support.backends import redis_backend
from support.scenarios import one_effect

pytestmark = pytest.mark.timeout(60)

NOW = 1_764_500_000_000  # 2025-11-30 10:53:20 UTC
AT = "2025-11-30T10:50:00+00:00"  # 200 s before NOW
AT_MS = NOW - 200_000


def facts(**kw: Any) -> Facts:
    base = {"run_id": "r-1", "status": "running", "workflow_id": "wf", "node": "n", "updated_at": AT, "now_ms": NOW}
    return Facts(**{**base, **kw})


# -- classification (pure) --------------------------------------------------------------------------


def test_each_cause_has_its_threshold():
    s = WorkerSettings(stuck_no_consumer_s=7, stuck_waiting_user_s=0, stuck_running_s=11)
    assert threshold_ms(s, Code.NO_CONSUMER) == 7000
    assert threshold_ms(s, Code.WAITING_USER) == 0  # 0: never stuck for that cause
    assert threshold_ms(s, Code.MOVING) == threshold_ms(s, Code.RETRY_BACKOFF) == 11_000
    assert threshold_ms(s, Code.COMPLETED) == threshold_ms(s, Code.FAILED) == 0
    assert "COMPLETED" not in CAUSES and "WAITING_TIMER" not in CAUSES and "NO_CONSUMER" in CAUSES


def test_a_run_nobody_consumes_is_judged_from_its_last_commit():
    d, cause, since, t = classify(facts(dispatch="tick", queue="ticks", lease_ms=NOW + 5000, consumers=()),
                                  WorkerSettings(), NOW)
    assert (d.code, cause, since, t) == (Code.NO_CONSUMER, "NO_CONSUMER", AT_MS, 60_000)


def test_a_sleeping_run_is_judged_from_its_wake_time_not_its_timer_entry():
    # The sweep pushes a claimed timer entry ahead each time it sends the wake again: the
    # entry says "due in 5 s", the run's own wait says it was due 3 min ago.
    w = {"reason": "until", "wait_key": "until:r-1", "until": "2025-11-30T10:50:20+00:00"}
    d, cause, since, t = classify(facts(status="waiting", waiting=w, timer_ms=NOW + 5000, last_sweep_ms=NOW),
                                  WorkerSettings(), NOW)
    assert d.code is Code.TIMER_OVERDUE and cause == "TIMER_OVERDUE"
    assert since == AT_MS + 20_000 and t == 60_000
    # Not yet due: listed under TIMER_OVERDUE only once past its wake time by the threshold.
    w = {**w, "until": "2025-11-30T11:00:00+00:00"}
    d, cause, since, _t = classify(facts(status="waiting", waiting=w), WorkerSettings(), NOW)
    assert d.code is Code.WAITING_TIMER and cause == "TIMER_OVERDUE" and since > NOW


def test_waits_are_judged_from_the_commit_that_parked_them():
    d, cause, since, t = classify(facts(status="waiting", waiting={"reason": "event", "wait_key": "order:42"}),
                                  WorkerSettings(stuck_waiting_event_s=100), NOW)
    assert (cause, since, t) == ("WAITING_EVENT", AT_MS, 100_000) and "order:42" in d.sentence


# -- the detector, through the stub dispatcher --------------------------------------------------------


def asking_registry() -> Registry:
    reg = Registry()
    reg.register_workflow(one_effect(Effect(type=EffectType.ASK_USER, payload={"prompt": "Ship it?"},
                                            result_key="answer"), workflow_id="ask"))
    reg.register_workflow(one_effect(Effect(type=EffectType.WAIT_EVENT, payload={"wait_key": "evt:never"}),
                                     workflow_id="wait_event"))
    return reg


def stuck_events(store: Any) -> list[dict[str, str]]:
    out = []
    for _id, fields in store.client.xrange(store.keys.events()):
        if b"event" in fields:
            out.append({k.decode(): v.decode() for k, v in fields.items()})
    return out


def sweep_until(engine: Any, check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        engine.sweep()
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_a_question_left_unanswered_is_stuck_until_answered(store):
    # Given runs asking a person, with a threshold of 0.3 s for an unanswered question
    reg = asking_registry()
    engine, stub = make_stub_engine(store, reg, WorkerSettings(stuck_waiting_user_s=0.3, stuck_recheck_s=0.05))
    asked = engine.create(reg.workflows.get("ask"))
    other = engine.create(reg.workflows.get("wait_event"))  # waits too, but its threshold is a day
    stub.run_until_quiet(engine)
    engine.sweep()
    assert stuck_runs(store)["total"] == 0  # not yet: the threshold has not passed
    # If nobody answers, I expect the sweep to list it under WAITING_USER, and only it
    found = sweep_until(engine, lambda: stuck_runs(store)["causes"])
    assert list(found) == ["WAITING_USER"] and [r["run_id"] for r in found["WAITING_USER"]] == [asked]
    row = found["WAITING_USER"][0]
    assert row["workflow_id"] == "ask" and "Ship it?" in row["sentence"] and row["stuck_for_s"] >= 0.3
    assert stuck_counts(store) == {"WAITING_USER": 1}
    assert [(e["event"], e["run_id"], e["cause"]) for e in stuck_events(store)] == \
        [("run.stuck", asked, "WAITING_USER")]
    # Sweeps go on: it stays listed, with no second event
    for _ in range(3):
        engine.sweep()
    assert len(stuck_events(store)) == 1 and stuck_counts(store) == {"WAITING_USER": 1}
    # When it is answered, the next look finds it moved: run.unstuck, and the list is empty
    engine.resume(asked, wait_key=store.runs.load(asked).waiting.wait_key, payload="yes")
    stub.run_until_quiet(engine)
    assert sweep_until(engine, lambda: stuck_runs(store)["total"] == 0)
    events = stuck_events(store)
    assert [(e["event"], e["run_id"]) for e in events] == [("run.stuck", asked), ("run.unstuck", asked)]
    assert events[-1]["why"] in ("completed", "moved")
    assert store.runs.load(other).status == "waiting" and stuck_counts(store) == {}


def test_a_running_run_nobody_consumes_is_stuck_under_no_consumer(store):
    # Given a run whose tick is never delivered (no worker: the stub keeps the message) and
    # whose lease is long, with a threshold of 0.2 s for NO_CONSUMER
    reg = asking_registry()
    engine, _stub = make_stub_engine(store, reg, WorkerSettings(stuck_no_consumer_s=0.2, tick_lease_s=300))
    rid = engine.create(reg.workflows.get("ask"))
    found = sweep_until(engine, lambda: stuck_runs(store, cause="NO_CONSUMER")["causes"])
    assert [r["run_id"] for r in found["NO_CONSUMER"]] == [rid]
    assert "no worker consumes queue `ticks`" in found["NO_CONSUMER"][0]["sentence"]
    assert stuck_runs(store, older_than_s=3600)["total"] == 0  # --older-than filters by how long
    with pytest.raises(ValueError, match="unknown cause"):
        stuck_runs(store, cause="NOPE")


def test_the_sweep_reads_windows_not_every_run(store, monkeypatch):
    # Given one run stuck waiting for an event (threshold 2 s)
    reg = asking_registry()
    engine, stub = make_stub_engine(store, reg, WorkerSettings(stuck_waiting_event_s=2))
    stuck = engine.create(reg.workflows.get("wait_event"))
    stub.run_until_quiet(engine)
    assert sweep_until(engine, lambda: stuck_runs(store)["total"] == 1)
    sent = count_commands(store, monkeypatch)
    engine.sweep()
    alone = list(sent)
    # and then 150 runs that are fine (waiting, below their threshold)
    monkeypatch.undo()
    for _ in range(150):
        engine.create(reg.workflows.get("wait_event"))
    stub.run_until_quiet(engine)
    # If the sweep runs now, I expect the same commands as with the stuck run alone: the fine
    # runs are below the window, and the stuck run is not due for another look yet
    sent = count_commands(store, monkeypatch)
    engine.sweep()
    beside_many = list(sent)
    monkeypatch.undo()
    assert stuck_runs(store)["total"] == 1, "the fine runs were listed: the machine is too slow for this test"
    assert beside_many == alone, (alone, beside_many)
    assert not any(c in ("SCAN", "KEYS", "SMEMBERS") for c in beside_many), beside_many
    assert stuck_runs(store)["causes"]["WAITING_EVENT"][0]["run_id"] == stuck


def count_commands(store: Any, monkeypatch: Any) -> list[str]:
    """The Redis commands the store's client sends from now on (pipelines count each command)."""
    sent: list[str] = []
    client = store.client
    original = client.execute_command

    def execute_command(*args: Any, **kwargs: Any) -> Any:
        sent.append(str(args[0]).upper())
        return original(*args, **kwargs)

    monkeypatch.setattr(client, "execute_command", execute_command)
    original_pipeline = client.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = original_pipeline(*args, **kwargs)
        original_exec = pipe.execute

        def execute(*a: Any, **kw: Any) -> Any:
            sent.extend(str(c[0][0]).upper() for c in pipe.command_stack)
            return original_exec(*a, **kw)

        pipe.execute = execute
        return pipe

    monkeypatch.setattr(client, "pipeline", pipeline)
    return sent


# -- the CLI and doctor -------------------------------------------------------------------------------


def test_the_cli_lists_stuck_runs_grouped_by_cause(redis_server, monkeypatch, capsys):
    import json

    from workers.cli import cli

    store = redis_backend(redis_server.client())
    reg = asking_registry()
    engine, stub = make_stub_engine(store, reg, WorkerSettings(stuck_waiting_user_s=0.2, stuck_no_consumer_s=0.2))
    asked = engine.create(reg.workflows.get("ask"))
    stub.run_until_quiet(engine)
    queued = engine.create(reg.workflows.get("ask"))  # its tick stays in the stub: nobody consumes
    assert sweep_until(engine, lambda: len(stuck_counts(store)) == 2)
    env = {"ABSTRACTRUNTIME_REDIS_URL": redis_server.url, "ABSTRACTRUNTIME_REDIS_PREFIX": store.keys.prefix}
    runner = CliRunner()
    out = runner.invoke(cli, ["stuck", "--json"], env=env)
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["total"] == 2
    assert [r["run_id"] for r in data["causes"]["WAITING_USER"]] == [asked]
    assert [r["run_id"] for r in data["causes"]["NO_CONSUMER"]] == [queued]
    human = runner.invoke(cli, ["stuck", "--cause", "waiting_user"], env=env)
    assert human.exit_code == 0 and "WAITING_USER (1)" in human.output and asked in human.output
    assert queued not in human.output
    assert "no stuck runs older than 1d" in runner.invoke(cli, ["stuck", "--older-than", "1d"], env=env).output
    # Refusals go through the console script's main(): one line, exit 2 (bad input)
    from workers.cli import main

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["stuck", "--cause", "nope"]) == 2
    assert refused_line(capsys).startswith("error: --cause: unknown cause 'nope'")
    assert main(["stuck", "--older-than", "ten minutes"]) == 2
    assert "--older-than: not a duration" in refused_line(capsys)


def refused_line(capsys: Any) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_parse_duration():
    from workers.cli.stuck import parse_duration

    assert [parse_duration(t) for t in ("90", "90s", "10m", "2h", "1d", "1.5m")] == [90, 90, 600, 7200, 86400, 90]
    with pytest.raises(ValueError):
        parse_duration("-1m")


def test_the_events_cursor_beside_the_index_cursors_does_not_break_the_windows(store):
    # The detector keeps the events stream's cursor (a stream id) in the same hash as the
    # index cursors (scores): reading the scores must not trip on it.
    store.set_stuck_cursors({"events": "1764526474000-0", "running": 1234.5})
    assert store.stuck_cursors() == {"running": 1234.5}
