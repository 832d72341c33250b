"""Named waits on real Redis, real Celery worker processes and beat (issue 15's acceptance):

* three waits (legal: boolean, 10 s deadline, reminder at 4 s, escalation to ``manager`` at
  7 s; finance: integer 1-1,000; comment: optional text, 6 s deadline with default "") and
  mode ``all``: an invalid legal answer is refused through the CLI and changes nothing; the
  reminder and the escalation arrive after 4 s and 7 s, never before; the comment times out to
  its default; the run resumes with all three answers;
* ``any`` and ``n_of(2)`` resume at the right answer and close the rest as superseded;
* two processes answer two different waits of 100 runs in parallel: no answer lost; two
  processes answer the same wait: exactly one wins each time;
* workers and beat SIGKILLed before the reminder and escalation are due: after the restart each
  fires exactly once;
* ``respond`` with two waits pending is ambiguous (exit 2), an unknown wait is named (exit 3).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from runtime import RunStatus
from runtime.waitset import n_of

from support.cli import ok, refused
from support.driver_compare import delivery_records
from support.processes import until
from support.wait_scenarios import THREE

pytestmark = pytest.mark.timeout(240)

CLI = str(Path(sys.executable).with_name("abstractruntime"))
TESTS_DIR = Path(__file__).resolve().parent
IMPORTS = "support.celery_scenarios,support.wait_scenarios"


@pytest.fixture
def group(fresh: Any) -> Any:
    g = fresh(imports=IMPORTS)
    g.start_worker("w1", concurrency=1)
    g.start_beat()
    return g


def cli(group: Any, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_") and k != "PYTHONPATH"}
    env.update(group.env)
    env["PYTHONPATH"] = str(TESTS_DIR)
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=60)


def wait_events(client: Any, run_id: str) -> list[tuple[str, str, int]]:
    """(event, wait, stream time in ms by the Redis clock) of the run's wait.* events."""
    out = []
    for entry_id, fields in client.backend.client.xrange(client.backend.keys.events()):
        f = {k.decode(): v.decode() for k, v in fields.items()}
        if f.get("run_id") == run_id and f.get("event", "").startswith("wait."):
            out.append((f["event"], f["wait"], int(entry_id.decode().split("-")[0])))
    return out


def opened_ms(client: Any, run_id: str) -> int:
    return int(client.get_state(run_id).waiting.details["waits"]["legal"]["opened_ms"])


def test_three_waits_on_workers_and_beat(group):
    client = group.client()
    run_id = client.start("named_waits", vars={"waits": THREE})
    client.wait_for(run_id, ["waiting"], timeout=30)
    t0 = opened_ms(client, run_id)
    # (the CLI calls come first: each starts a process, and the comment expires at 6 s)
    listed = ok(cli(group, "--json", "waits", "--assignee", "legal-team"))
    assert [w["wait"] for w in listed] == ["comment", "legal"]  # soonest deadline first
    ledger = client.get_ledger(run_id)
    refused(cli(group, "answer", run_id, "legal", "--payload", '"yes"', "--by", "ann"), 2, "must be boolean")
    assert client.get_ledger(run_id) == ledger and client.get_state(run_id).status == RunStatus.WAITING
    ok(cli(group, "--json", "answer", run_id, "finance", "--payload", "250", "--by", "bob"))
    until(lambda: any(e[0] == "wait.escalated" for e in wait_events(client, run_id)), timeout=20)
    [legal] = client.list_waits(assignee="manager")  # reassigned at 7 s; the deadline is at 10 s
    assert legal["wait"] == "legal" and legal["level"] == 1 and legal["prompt"] == "Is the contract approved?"
    client.answer(run_id, "legal", True, "manager")
    state = client.wait_for(run_id, ["completed", "failed"], timeout=30)
    assert state.status == RunStatus.COMPLETED, state.error
    assert state.output["answers"] == {"finance": 250, "comment": "", "legal": True}
    events = wait_events(client, run_id)
    at = {(e, w): ms - t0 for e, w, ms in events}
    assert [(e, w) for e, w, _ in events] == [
        ("wait.opened", "legal"), ("wait.opened", "finance"), ("wait.opened", "comment"),
        ("wait.answered", "finance"), ("wait.reminder", "legal"), ("wait.expired", "comment"),
        ("wait.escalated", "legal"), ("wait.answered", "legal")]
    # never before their time, by the Redis clock (how late: tests/bench/wait_timers.py measures it)
    assert at[("wait.reminder", "legal")] >= 4000
    assert at[("wait.expired", "comment")] >= 6000
    assert at[("wait.escalated", "legal")] >= 7000
    deliveries = delivery_records(client.get_ledger(run_id))
    assert [(t, w) for t, w, _ in deliveries] == [
        ("wait_answer", "finance"), ("wait_reminder", "legal"), ("wait_expired", "comment"),
        ("wait_escalated", "legal"), ("wait_answer", "legal")]
    who = [r["actor_id"] for r in client.get_ledger(run_id) if (r["effect"] or {}).get("type") == "wait_answer"]
    assert who == ["bob", "manager"]  # "who approved this?" is in the verified chain
    assert ok(cli(group, "--json", "verify", run_id))["ok"]


@pytest.mark.parametrize("mode, answers, superseded", [
    ("any", [("b", 2)], ["a", "c"]),
    (n_of(2), [("c", 3), ("a", 1)], ["b"]),
])
def test_any_and_n_of_on_workers(group, mode, answers, superseded):
    client = group.client()
    waits = [{"name": n, "prompt": f"{n}?", "schema": {"type": "integer"}} for n in "abc"]
    run_id = client.start("named_waits", vars={"waits": waits, "mode": mode})
    client.wait_for(run_id, ["waiting"], timeout=30)
    for name, value in answers:
        client.answer(run_id, name, value, "ann")
    state = client.wait_for(run_id, ["completed", "failed"], timeout=30)
    assert state.output["answers"] == dict(answers)
    last = [r for r in client.get_ledger(run_id) if (r["effect"] or {}).get("type") == "wait_answer"][-1]
    assert last["result"]["superseded"] == superseded
    refused(cli(group, "answer", run_id, superseded[0], "--payload", "1"), 4, "superseded")


_ANSWERER = r"""
import json, sys
from runtime.waitset import WaitClosed
from workers.client import Client
client = Client()
run_ids, wait, who = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
won = []
for rid in run_ids:
    try:
        client.answer(rid, wait, who, who)
        won.append(rid)
    except WaitClosed as exc:
        assert exc.answered_by and exc.answered_by != who, exc
print(json.dumps(won))
"""


def answer_in_parallel(group: Any, run_ids: list[str], plan: list[tuple[str, str]]) -> list[list[str]]:
    """Each (wait, answerer) of ``plan`` answers ``wait`` of every run, in its own process, all at once."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_")}
    env.update(group.env)
    procs = [subprocess.Popen([sys.executable, "-c", _ANSWERER, json.dumps(run_ids), wait, who], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for wait, who in plan]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr[-3000:]
        out.append(json.loads(stdout))
    return out


def test_answers_from_two_processes_commute_and_one_wins_a_race(group):
    client = group.client()
    waits = [{"name": n, "prompt": f"{n}?", "schema": {"type": "string"}} for n in ("x", "y", "z")]
    run_ids = [client.start("named_waits", vars={"waits": waits}) for _ in range(100)]
    until(lambda: all(client.get_state(r).status == RunStatus.WAITING for r in run_ids), timeout=60)
    # two processes, two different waits of the same runs: nothing lost
    won_x, won_y = answer_in_parallel(group, run_ids, [("x", "p1"), ("y", "p2")])
    assert won_x == run_ids and won_y == run_ids
    # two processes, the same wait: exactly one of them wins each run
    won_a, won_b = answer_in_parallel(group, run_ids, [("z", "p3"), ("z", "p4")])
    assert sorted(won_a + won_b) == sorted(run_ids)
    for rid in run_ids:
        state = client.wait_for(rid, ["completed", "failed"], timeout=60)
        answers = state.output["answers"]
        assert answers["x"] == "p1" and answers["y"] == "p2" and answers["z"] == ("p3" if rid in won_a else "p4")
        assert [t for t, *_ in delivery_records(client.get_ledger(rid))] == ["wait_answer"] * 3


def test_reminders_and_escalations_fire_once_after_workers_and_beat_die(group):
    client = group.client()
    legal = {"name": "legal", "prompt": "Approve?", "schema": {"type": "boolean"}, "assignees": ["legal-team"],
             "reminders": ["2s", "3s"], "escalation": [{"after": "4s", "reassign": ["manager"]}], "deadline": "60s"}
    run_id = client.start("named_waits", vars={"waits": [legal]})
    client.wait_for(run_id, ["waiting"], timeout=30)
    t0 = opened_ms(client, run_id)
    group.kill("w1")
    group.kill("beat")
    while client.backend.time_ms() < t0 + 5000:  # all three are due while nothing runs
        time.sleep(0.1)
    assert delivery_records(client.get_ledger(run_id)) == []
    group.start_worker("w2", concurrency=1)
    group.start_beat("beat2")
    until(lambda: len(delivery_records(client.get_ledger(run_id))) >= 3, timeout=30)
    time.sleep(3)  # three more sweeps: nothing fires twice
    fired = [(t, r) for t, _w, r in delivery_records(client.get_ledger(run_id))]
    assert [t for t, _ in fired] == ["wait_reminder", "wait_reminder", "wait_escalated"]
    assert [e for e, _w, _ms in wait_events(client, run_id)] == [
        "wait.opened", "wait.reminder", "wait.reminder", "wait.escalated"]
    [w] = client.list_waits(assignee="manager")
    assert w["level"] == 1 and w["run_id"] == run_id
    client.answer(run_id, "legal", True, "manager")
    assert client.wait_for(run_id, ["completed"], timeout=30).output["answers"] == {"legal": True}
    assert client.verify(run_id)["ok"]


def test_respond_is_ambiguous_and_unknown_waits_are_named_by_the_cli(group):
    client = group.client()
    waits = [{"name": n, "prompt": f"{n}?"} for n in ("first", "second")]
    run_id = client.start("named_waits", vars={"waits": waits})
    client.wait_for(run_id, ["waiting"], timeout=30)
    refused(cli(group, "respond", run_id, "yes"), 2, "2 waits (first, second)", "answer one by name")
    refused(cli(group, "answer", run_id, "third", "--payload", "1"), 3, "no open wait 'third'",
            "'first', 'second'")
    status = ok(cli(group, "--json", "waiting"))
    assert [r["waits"] for r in status if r["run_id"] == run_id] == [["first", "second"]]
    assert delivery_records(client.get_ledger(run_id)) == []
