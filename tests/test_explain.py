"""Why a run does not move: ``explain``, one pure function over stored facts.

First the function itself on constructed facts, one test per code (fast); then real Redis,
real Celery workers and beat: a run waiting on an event nobody emits, a child waiting for a
person, a queue nobody consumes, an expired lease with no beat, and the bound on the Redis
commands one explanation costs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workers.explain import BACKLOG_MIN, Code, Facts, diagnose

from support.processes import until

NOW = 1_764_500_000_000  # 2025-11-30 10:53:20 UTC, epoch ms
AT = "2025-11-30T10:50:00+00:00"


def facts(**kw) -> Facts:
    base = {"run_id": "r-1", "status": "running", "workflow_id": "wf", "node": "n", "updated_at": AT, "now_ms": NOW}
    return Facts(**{**base, **kw})


def waiting(reason: str, key: str | None = None, **w) -> dict:
    return {"reason": reason, "wait_key": key, **w}


# -- the pure function, every code ------------------------------------------------------------------


def test_terminal_codes():
    assert diagnose(facts(status="completed")).code is Code.COMPLETED
    assert diagnose(facts(status="cancelled")).code is Code.CANCELLED
    failed = diagnose(facts(status="failed", error="ValueError: boom",
                            last_failure={"where": "node", "node": "n", "attempt": 3, "traceback": "..."}))
    assert failed.code is Code.FAILED and "ValueError: boom" in failed.sentence and "traceback" in failed.sentence
    assert "last_failure" in failed.action


def test_waits():
    d = diagnose(facts(status="waiting", waiting=waiting("event", "order:42"), waiters=3))
    assert d.code is Code.WAITING_EVENT
    assert d.sentence == "waiting for event `order:42` since 10:50:00 (3 runs wait on it)"
    assert d.since == AT and "emit order:42" in d.action
    d = diagnose(facts(status="waiting", waiting=waiting("user", "user:r-1", prompt="Go?")))
    assert d.code is Code.WAITING_USER and "a person" in d.sentence and "respond r-1" in d.action
    d = diagnose(facts(status="waiting", waiting=waiting("until", "until:r-1", until="2026-01-01T00:00:00+00:00"),
                       timer_ms=NOW + 60_000))
    assert d.code is Code.WAITING_TIMER
    d = diagnose(facts(status="waiting", waiting=waiting("job", "job:7")))
    assert d.code is Code.WAITING_JOB and "job:7" in d.sentence


def test_timer_overdue_names_beat():
    due = NOW - 4 * 60_000
    d = diagnose(facts(status="waiting", waiting=waiting("until", "until:r-1"), timer_ms=due,
                       last_sweep_ms=NOW - 11 * 60_000))
    assert d.code is Code.TIMER_OVERDUE
    assert d.sentence == "due 10:49:20, 4 min overdue: beat last seen 10:42:20"


def test_waiting_child_names_the_deepest_run():
    grandchild = facts(run_id="r-9", status="waiting", waiting=waiting("user", "user:r-9"))
    child = facts(run_id="r-5", status="waiting", waiting=waiting("subworkflow", "subworkflow:r-9"),
                  child_id="r-9", child=grandchild)
    d = diagnose(facts(status="waiting", waiting=waiting("subworkflow", "subworkflow:r-5"), child_id="r-5",
                       child=child))
    assert d.code is Code.WAITING_CHILD and d.sentence == "child r-9 waits for a person since 10:50:00"
    assert d.cause is not None and d.cause.cause is not None and d.cause.cause.code is Code.WAITING_USER
    assert d.to_dict()["cause"]["cause"]["code"] == "WAITING_USER"
    unseen = diagnose(facts(status="waiting", waiting=waiting("subworkflow", "subworkflow:r-5")))
    assert unseen.code is Code.WAITING_CHILD and "r-5" in unseen.sentence


def test_running_codes():
    moving = {"dispatch": "tick", "queue": "ticks", "lease_ms": NOW + 10_000, "consumers": ("w1",), "queue_depth": 0}
    d = diagnose(facts(**moving))
    assert d.code is Code.MOVING and d.sentence == "last commit 3 min ago; tick expected on `ticks`"
    assert diagnose(facts()).code is Code.ORPHANED
    d = diagnose(facts(**{**moving, "queue": "llm", "consumers": ()}))
    assert d.code is Code.NO_CONSUMER and d.sentence == "no worker consumes queue `llm`"
    d = diagnose(facts(**{**moving, "queue_depth": 412, "queue": "tools"}))
    assert d.code is Code.BACKLOG and d.sentence == "412 messages ahead in `tools`" and 412 >= BACKLOG_MIN
    d = diagnose(facts(**{**moving, "lease_ms": NOW - 60_000, "queue": "llm", "token": 6}))
    assert d.code is Code.LEASE_EXPIRED
    assert d.sentence == "lease expired 10:52:20 (fencing token 6), no recovery sweep has run"
    d = diagnose(facts(**{**moving, "lease_ms": NOW - 1000, "queue": "llm", "last_sweep_ms": NOW - 200, "token": 6}))
    assert d.sentence == "lease expired 10:53:19 (fencing token 6), the next sweep re-dispatches it with token 7 " \
                         "to queue `llm`"
    # The sweep sent it again; until the new holder commits, the run is recovering.
    d = diagnose(facts(**{**moving, "queue": "llm", "token": 7, "regranted_ms": NOW - 1000}))
    assert d.code is Code.LEASE_EXPIRED and d.evidence["token"] == 7
    assert d.sentence == "lease expired 10:53:19, re-dispatched with token 7 to queue `llm`"
    d = diagnose(facts(**{**moving, "dispatch": "effect", "queue": "llm", "attempt": 4, "max_attempts": 5,
                          "attempt_started": False, "lease_ms": NOW + 600_000 + 30_000, "effect_lease_ms": 600_000,
                          "last_error": "TimeoutError"}))
    assert d.code is Code.RETRY_BACKOFF and d.sentence == "attempt 3/5 failed (TimeoutError), next at 10:53:50"
    d = diagnose(facts(**{**moving, "broker_error": "redis://:***@h:6379/1: ConnectionError: refused"}))
    assert d.code is Code.BROKER_UNREACHABLE and "***" in d.sentence


def test_every_code_is_documented():
    text = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    assert "Why is this run not moving?" in text
    for code in Code:
        assert f"`{code.value}`" in text, code


# -- real workers ---------------------------------------------------------------------------------


pytestmark_real = pytest.mark.timeout(120)
CLI = str(Path(sys.executable).with_name("abstractruntime"))
TESTS_DIR = Path(__file__).resolve().parent


def run(group, *args: str, **extra: str) -> subprocess.CompletedProcess:
    """The CLI as a user types it, in the group's deployment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_") and k != "PYTHONPATH"}
    env.update(group.env, PYTHONPATH=str(TESTS_DIR), **extra)
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=60)


def code_becomes(client, rid: str, code: Code, timeout: float = 20.0):
    seen = []

    def check():
        d = client.explain(rid)
        seen.append(d.code)
        return d if d.code is code else None

    d = until(check, timeout)
    assert d is not None, f"{rid}: wanted {code}, saw {seen[-5:]}"
    return d


@pytestmark_real
def test_waiting_event_and_child(group, client, monkeypatch):
    rid = client.start("wait_event")
    client.wait_for(rid, ["waiting"], timeout=30)
    d = client.explain(rid)
    assert d.code is Code.WAITING_EVENT and "`evt:go`" in d.sentence and d.action.startswith("abstractruntime emit")

    parent = client.start("parent_of_asking")
    client.wait_for(parent, ["waiting"], timeout=30)
    child = until(lambda: client.backend.children_of(parent))[0]
    client.wait_for(child, ["waiting"], timeout=30)
    d = client.explain(parent)
    assert d.code is Code.WAITING_CHILD and d.sentence.startswith(f"child {child} waits for a person since")
    assert d.cause is not None and d.cause.code is Code.WAITING_USER
    from workers.fleet import MAX_COMMANDS, explain_run

    sent = count_commands(monkeypatch)
    assert explain_run(client.backend, client.settings, parent).code is Code.WAITING_CHILD
    monkeypatch.undo()
    assert len(sent) <= MAX_COMMANDS, sent

    # The CLI needs no workflow code to explain a run: the module it would import does not exist.
    proc = run(group, "explain", parent, "--json", "--tree", ABSTRACTRUNTIME_IMPORTS="no_such_module")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["code"] == "WAITING_CHILD" and out["cause"]["code"] == "WAITING_USER"
    human = run(group, "explain", parent, "--tree")
    assert "WAITING_CHILD" in human.stdout and "WAITING_USER" in human.stdout
    missing = run(group, "explain", "no-such-run")
    assert missing.returncode == 3 and "no-such-run" in missing.stderr

    from runtime.errors import RunNotFound

    with pytest.raises(RunNotFound):
        client.explain("no-such-run")


def count_commands(monkeypatch) -> list[str]:
    """Every Redis command this process sends from now on (store and broker), by name."""
    import redis.connection

    sent: list[str] = []
    for cls in (redis.connection.HiredisRespSerializer, redis.connection.PythonRespSerializer):
        original = cls.pack

        def pack(self, *args, _original=original):
            sent.append(str(args[0]))
            return _original(self, *args)

        monkeypatch.setattr(cls, "pack", pack)
    return sent


@pytestmark_real
def test_no_consumer_then_moving_and_a_bounded_number_of_commands(fresh, monkeypatch):
    # Given a deployment whose one worker consumes every queue but llm
    g = fresh(tick_backoff_s=0.05)
    g.start_worker("w1", queues="ticks,tools,subworkflows,timers,maintenance")
    client = g.client()
    live = until(lambda: client.backend.live_processes(client.backend.time_ms() - 15_000))
    assert live and live[0]["kind"] == "worker" and g.settings().queue("ticks") in live[0]["queues"]
    # If an llm run starts, I expect explain to say nobody consumes queue llm
    rid = client.start("llm")
    d = code_becomes(client, rid, Code.NO_CONSUMER)
    assert d.sentence == f"no worker consumes queue `{g.settings().queue('llm')}`" and "worker --queues" in d.action

    # The most expensive explanation (a running run: lease, sweep, heartbeats, broker) is bounded.
    from workers.fleet import MAX_COMMANDS, BrokerProbe, explain_run

    probe = BrokerProbe(client.app, client.settings)
    explain_run(client.backend, client.settings, rid, broker=probe)  # connections made
    sent = count_commands(monkeypatch)
    assert explain_run(client.backend, client.settings, rid, broker=probe).code is Code.NO_CONSUMER
    probe.close()
    print("commands of one explain:", sent)
    assert 0 < len(sent) <= MAX_COMMANDS <= 15, sent
    assert not any(name.upper() in ("SCAN", "KEYS", "SMEMBERS") for name in sent), sent
    monkeypatch.undo()

    # When an llm worker starts (a prefork one: its main process beats), the run moves and ends
    g.start_worker("w2", queues="llm", pool="prefork")
    client.wait_for(rid, ["completed"], timeout=30)
    assert client.explain(rid).code is Code.COMPLETED
    kinds = {p["hostname"].split(".")[0]: p for p in client.backend.live_processes(0)}
    assert kinds["w2"]["queues"] == [g.settings().queue("llm")] and kinds["w2"]["pid"] == g.procs["w2"].pid
    # A worker that stops cleanly leaves the heartbeats
    g.stop("w1")
    assert [p["hostname"].split(".")[0] for p in client.backend.live_processes(0)] == ["w2"]


@pytestmark_real
def test_lease_expired_without_beat(fresh, tmp_path):
    # Given a deployment without beat whose worker dies inside a node (its lease is 1 s)
    g = fresh(tick_lease_s=1, tick_backoff_s=0.05)
    g.start_worker("w1")
    client = g.client()
    rid = client.start("crashy", vars={"die_tick": str(tmp_path / "died")})
    until(lambda: g.procs["w1"].poll() is not None, 20)
    g.start_worker("w2")  # someone consumes the queues; the tick died with w1
    d = code_becomes(client, rid, Code.LEASE_EXPIRED)
    assert "no recovery sweep has run" in d.sentence and "beat" in d.action
    # When beat starts, the sweep sends the tick again and the run ends
    g.start_beat()
    client.wait_for(rid, ["completed"], timeout=30)
    assert "beat" in {p["kind"] for p in client.backend.live_processes(0)}
    assert client.explain(rid).code is Code.COMPLETED
