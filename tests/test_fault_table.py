"""The fault table of issue 13, on real Redis, real Celery worker processes and beat.

Each row induces one reason a run does not move, asks ``abstractruntime explain RUN --json``
(the console script, as an operator types it) for its code and checks that the sentence
names what is at fault (the queue, the due time, the event key, the child, the attempt, the
expired lease), then removes the cause and sees the run move on: ``explain`` says ``MOVING``
if it catches the run in flight, ``COMPLETED`` once it ended.

Rows already covered end to end in ``tests/test_explain.py`` are not repeated here: a queue
that never had a consumer (``llm``) gets one and the run completes; a tick lease expired with
no beat at all is recovered once beat starts. This table stops a worker that did consume its
queue (``tools``), and kills the worker holding an effect lease in the middle of a slow tool.

At the end, the neighbours of a poison run: runs on the same workers keep completing, each
within about one lease period, while a node that kills its worker process is delivered again
until the sweep fails its run (``tests/test_poison.py`` covers the poisoned run itself).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from runtime import RunStatus

from support.processes import until

TESTS_DIR = Path(__file__).resolve().parent
CLI = str(Path(sys.executable).with_name("abstractruntime"))
#: Every queue kind but the one a row takes away.
ALL_BUT = {kind: ",".join(k for k in ("ticks", "llm", "tools", "subworkflows", "timers", "maintenance") if k != kind)
           for kind in ("tools", "timers")}
#: Short leases and sweeps for the rows that wait for one (seconds).
LEASE_S = 2.0
SWEEP_S = 0.5

pytestmark = pytest.mark.timeout(120)


# -- helpers -------------------------------------------------------------------------------------


def explain(group: Any, run_id: str) -> dict[str, Any]:
    """``abstractruntime explain RUN --json`` in the group's deployment, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_") and k != "PYTHONPATH"}
    env.update(group.env, PYTHONPATH=str(TESTS_DIR))
    proc = subprocess.run([CLI, "explain", run_id, "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr}"
    return json.loads(proc.stdout)


def explained_as(group: Any, run_id: str, code: str, timeout: float = 20.0) -> dict[str, Any]:
    """Ask ``explain`` until it answers ``code``; fails naming the codes it gave instead."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        out = explain(group, run_id)
        if out["code"] == code:
            return out
        seen.append(f"{out['code']}: {out['sentence']}")
        assert time.monotonic() < deadline, f"{run_id}: wanted {code}, saw {seen[-4:]}"
        time.sleep(0.2)


def moves_on(group: Any, client: Any, run_id: str, timeout: float = 30.0) -> Any:
    """Once the cause is gone: ``explain`` says MOVING (caught in flight) or COMPLETED, and the
    run completes."""
    out = explain(group, run_id)
    deadline = time.monotonic() + timeout
    while out["code"] not in ("MOVING", "COMPLETED"):
        assert time.monotonic() < deadline, f"{run_id} does not move: {out['code']}: {out['sentence']}"
        time.sleep(0.2)
        out = explain(group, run_id)
    done = client.wait_for(run_id, ("completed", "failed", "cancelled"), timeout=timeout)
    assert done.status == RunStatus.COMPLETED, done.error
    assert explain(group, run_id)["code"] == "COMPLETED"
    return done


def hms(ms: int) -> str:
    """A Redis-clock time as ``explain`` writes it."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%H:%M:%S")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# -- the table -----------------------------------------------------------------------------------


def swept_once_then_no_beat(g: Any, client: Any) -> Any:
    """Start beat, wait for its first sweep, stop it with no sweep left queued; the broker client."""
    g.start_beat()
    assert until(lambda: client.backend.last_sweep_ms() is not None), "beat never swept"
    g.stop("beat")
    broker = g.broker()
    assert until(lambda: broker.llen(g.settings().queue("maintenance")) == 0), "a sweep is still queued"
    return broker


def test_no_consumer_when_every_tools_worker_stopped(fresh):
    # Given a deployment whose tools queue has one worker of its own, which did run a tool call
    g = fresh(tick_backoff_s=0.05)
    g.start_worker("main", queues=ALL_BUT["tools"])
    g.start_worker("tools", queues="tools")
    client = g.client()
    tools_q = g.settings().queue("tools")
    first = client.start("tool_loop")
    assert client.wait_for(first, ("completed", "failed"), timeout=30).status == RunStatus.COMPLETED
    # If that worker stops (cleanly: its heartbeat goes with it) and a run calls a tool
    g.stop("tools")
    assert not [p for p in client.backend.live_processes(0) if tools_q in p.get("queues", [])]
    rid = client.start("tool_loop")
    # I expect explain to say that nobody consumes the tools queue
    out = explained_as(g, rid, "NO_CONSUMER")
    assert out["sentence"] == f"no worker consumes queue `{tools_q}`"
    assert out["evidence"]["queue"] == tools_q and out["evidence"]["dispatch"] == "effect"
    assert f"--queues {tools_q}" in out["action"]
    # When a tools worker starts again, the run moves on and completes
    g.start_worker("tools2", queues="tools")
    assert moves_on(g, client, rid).output["seen"]


def test_timer_overdue_when_beat_stopped_and_the_wake_was_lost(fresh):
    # Given a deployment whose beat has swept once and then stopped, and no worker on timers
    g = fresh(tick_backoff_s=0.05, sweep_period_s=SWEEP_S)
    g.start_worker("main", queues=ALL_BUT["timers"])
    client = g.client()
    broker = swept_once_then_no_beat(g, client)
    # If a run sleeps until a second from now, and the countdown message of its wake is lost
    rid = client.start("sleep_until", vars={"until": datetime.fromtimestamp(
        (client.backend.time_ms() + 1000) / 1000, tz=timezone.utc).isoformat()})
    client.wait_for(rid, ["waiting"], timeout=30)
    due = client.backend.timer_ms(rid)
    assert due is not None
    timers_q = g.settings().queue("timers")
    assert until(lambda: broker.llen(timers_q) == 1, 5), "the wake's countdown message was not queued"
    broker.delete(timers_q)
    broker.close()
    # I expect explain to say the timer is overdue and when beat was last seen (5 s grace first)
    out = explained_as(g, rid, "TIMER_OVERDUE", timeout=30)
    last_sweep = client.backend.last_sweep_ms()
    assert last_sweep is not None and last_sweep < due
    assert re.fullmatch(rf"due {hms(due)}, \d+ s overdue: beat last seen {hms(last_sweep)}", out["sentence"]), out
    assert "beat" in out["action"]
    # When beat starts again, with a worker on timers, its sweep wakes the run and it completes
    g.start_worker("timers", queues="timers")
    g.start_beat()
    assert "woke_at" in moves_on(g, client, rid).output


def test_waiting_event_until_it_is_emitted(group, client):
    # Given two runs waiting for the same event, which nobody emits
    key = f"order:{uuid.uuid4().hex[:8]}"
    rids = [client.start("wait_on_key", vars={"key": key}) for _ in range(2)]
    for rid in rids:
        client.wait_for(rid, ["waiting"], timeout=30)
    # I expect explain to name the event key and the runs that wait on it
    out = explain(group, rids[0])
    assert out["code"] == "WAITING_EVENT"
    assert out["sentence"].startswith(f"waiting for event `{key}` since ") and "(2 runs wait on it)" in out["sentence"]
    assert out["action"].startswith(f"abstractruntime emit {key}")
    # When the event is emitted, both move on and complete with its payload
    assert sorted(client.emit(key, {"paid": True})) == sorted(rids)
    for rid in rids:
        assert moves_on(group, client, rid).output == {"evt": {"paid": True}}


def test_waiting_child_until_the_child_gets_its_answer(group, client):
    # Given a parent whose sync child asks a person
    parent = client.start("parent_of_asking")
    client.wait_for(parent, ["waiting"], timeout=30)
    [child] = until(lambda: client.backend.children_of(parent))
    client.wait_for(child, ["waiting"], timeout=30)
    # I expect explain of the parent to name the child and what the child waits for
    out = explain(group, parent)
    assert out["code"] == "WAITING_CHILD" and out["evidence"]["child_run_id"] == child
    assert out["sentence"].startswith(f"child {child} waits for a person since ")
    assert out["cause"]["code"] == "WAITING_USER" and out["action"] == f"abstractruntime respond {child} ANSWER"
    # When the child is answered, the child and then the parent complete
    client.respond(child, "yes")
    done = moves_on(group, client, parent)
    assert done.output["child"]["sub_run_id"] == child
    assert client.get_state(child).status == RunStatus.COMPLETED


def test_retry_backoff_names_the_attempt_until_the_tool_succeeds(group, client, tmp_path):
    # Given a tool that times out until a flag file exists, retried up to 5 times, 6 s apart
    counter, fixed = tmp_path / "calls.txt", tmp_path / "fixed"
    rid = client.start("tool_retry", vars={"counter": str(counter), "fixed": str(fixed), "backoff_s": 6})
    # If its second attempt has failed
    assert until(lambda: len(lines(counter)) >= 2), lines(counter)
    # I expect explain to name the failed attempt, its error and the next one's time
    out = explained_as(group, rid, "RETRY_BACKOFF", timeout=5)
    assert re.fullmatch(r"attempt 2/5 failed \(fail_until_fixed: the service timed out\), next at \d\d:\d\d:\d\d",
                        out["sentence"]), out
    assert out["evidence"]["attempt"] == 3 and out["evidence"]["queue"] == group.settings().queue("tools")
    assert out["sentence"].endswith(hms(out["evidence"]["next_ms"]))
    # When the tool is fixed (its third attempt then takes 4 s), the run moves on and completes
    fixed.write_text("4")
    assert until(lambda: len(lines(counter)) == 3, 15), lines(counter)
    out = explain(group, rid)
    assert out["code"] == "MOVING", out
    assert re.fullmatch(rf"last commit \d+ s ago; tool_calls attempt 3/5 expected on `{out['evidence']['queue']}`",
                        out["sentence"]), out
    assert moves_on(group, client, rid).output == {"calls": 3}
    assert len(lines(counter)) == 3
    attempts = [(r["attempt"], r["status"]) for r in client.get_ledger(rid) if r["node_id"] == "call"]
    assert attempts == [(1, "started"), (1, "failed"), (2, "started"), (2, "failed"), (3, "started"),
                        (3, "completed")], attempts
    assert client.verify(rid)["ok"]


def test_lease_expired_when_the_worker_holding_it_is_killed(fresh, tmp_path):
    # Given a deployment with 2 s leases and a worker of its own on the tools queue, whose beat
    # has swept and stopped (so that no sweep comes before this test looks)
    g = fresh(tick_backoff_s=0.05, tick_lease_s=LEASE_S, effect_lease_s=LEASE_S, sweep_period_s=SWEEP_S)
    g.start_worker("main", queues=ALL_BUT["tools"])
    g.start_worker("tools", queues="tools")
    client = g.client()
    broker = swept_once_then_no_beat(g, client)
    broker.close()
    tools_q = g.settings().queue("tools")
    counter, started = tmp_path / "calls.txt", tmp_path / "started"
    rid = client.start("slow_tool_once", vars={"counter": str(counter), "started": str(started), "seconds": 60})
    # If the tools worker is SIGKILLed in the middle of the slow tool
    assert until(started.exists), "the slow tool never started"
    g.kill("tools")
    lease = client.backend.lease_ms(rid)  # after the kill: the tool renewed it while it ran
    assert lease is not None
    token = int(client.backend.client.hget(client.backend.keys.run(rid), "g"))
    g.start_worker("tools2", queues="tools")  # a consumer again; the message died with the worker
    # I expect explain to say the lease expired, when, and which dispatch it held
    out = explained_as(g, rid, "LEASE_EXPIRED", timeout=20)
    last_sweep = client.backend.last_sweep_ms()
    assert last_sweep is not None
    # (within a grace of 5 s after the last sweep it names the queue the next sweep sends it to)
    sentence = out["sentence"]
    assert sentence.startswith(f"lease expired {hms(lease)} (fencing token {token})"), out
    assert f"no recovery sweep since {hms(last_sweep)}" in sentence or sentence.endswith(f"to queue `{tools_q}`"), out
    assert (out["evidence"]["dispatch"], out["evidence"]["queue"]) == ("effect", tools_q)
    # When beat starts again, its sweep sends the effect again with the next fencing token, and
    # the run completes
    g.start_beat()
    assert until(lambda: f"sweep: lease of run {rid} expired; effect sent again with fencing token {token + 1}"
                 in g.log("main"))
    [result] = moves_on(g, client, rid).output["slow"]["work"]["results"]
    assert (result["name"], result["success"], result["output"]) == ("slow_once", True, "work")
    assert lines(counter) == ["work", "work"]  # the killed call and the one that landed
    records = [(r["node_id"], r["status"]) for r in client.get_ledger(rid)]
    assert records.count(("work", "completed")) == 1, records
    # the landing commit was made by the holder of token N+1 (kept beside the ledger entry)
    entries = client.backend.client.xrange(client.backend.keys.ledger(rid))
    landed = [int(f[b"g"]) for (_id, f), r in zip(entries, client.get_ledger(rid))
              if (r["node_id"], r["status"]) == ("work", "completed")]
    assert landed == [token + 1], landed
    assert client.verify(rid)["ok"]


# -- the neighbours of a poison run ----------------------------------------------------------------


@pytest.mark.timeout(150)
def test_runs_beside_a_poison_run_complete_within_about_a_lease(fresh, tmp_path):
    # Given one prefork worker with two pool processes, beat, 2 s leases and poison_after=3
    g = fresh(tick_backoff_s=0.05, tick_lease_s=LEASE_S, effect_lease_s=LEASE_S, sweep_period_s=SWEEP_S,
              poison_after=3)
    g.start_worker("a", pool="prefork", concurrency=2)
    g.start_beat()
    client = g.client()
    # If a run's node ends its pool process (os._exit) at every delivery
    poisoned = client.start("poison", vars={"fixed": str(tmp_path / "never")})
    # and other runs keep arriving meanwhile (ticks and an LLM call)
    started: dict[str, float] = {}
    finished: dict[str, float] = {}
    deadline = time.monotonic() + 90
    while client.get_state(poisoned).status == RunStatus.RUNNING or len(started) < 4:
        assert time.monotonic() < deadline, "the poison run never ended"
        if len(started) < 30:
            rid = client.start("chain" if len(started) % 2 else "llm")
            started[rid] = time.monotonic()
        for rid in started.keys() - finished.keys():
            if client.get_state(rid).status != RunStatus.RUNNING:
                finished[rid] = time.monotonic()
        time.sleep(0.5)
    # I expect the poison run failed after three lost deliveries, explained as POISONED
    state = client.get_state(poisoned)
    assert state.status == RunStatus.FAILED and "lost its worker 3 times" in (state.error or ""), state.error
    out = explain(g, poisoned)
    assert out["code"] == "POISONED" and "crash" in out["sentence"] + out["action"], out
    # and every other run completed, none later than one lease (plus a margin) after it started
    margin_s = 4.0
    for rid in started:
        done = client.wait_for(rid, ("completed", "failed", "cancelled"), timeout=LEASE_S + margin_s + 10)
        finished.setdefault(rid, time.monotonic())
        assert done.status == RunStatus.COMPLETED, (rid, done.error)
    took = {rid: finished[rid] - started[rid] for rid in started}
    print(f"{len(took)} runs beside the poison run; slowest {max(took.values()):.2f} s")
    slow = {rid: round(s, 2) for rid, s in took.items() if s > LEASE_S + margin_s}
    assert not slow, f"delayed past one lease ({LEASE_S} s) + {margin_s} s: {slow}"
