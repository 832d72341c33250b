"""A wait is ended only by what it waits for, on real workers, through the CLI a user types.

A run sleeping until 2030 is not woken by ``respond``, by ``resume`` with any key, or by
``emit``; each refusal is one ``error:`` line, exit 4, naming the run, what it waits for
and since when, and nothing in Redis changes. ``wake --now --reason`` wakes it, and the
ledger records who and why. Also here: failures keep their traceback, ``start --wait``
exit codes, ``--json`` after the command, and the CLI importing workflow modules from the
current directory while read-only commands need none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.cli import ok, refused

pytestmark = pytest.mark.timeout(180)

CLI = str(Path(sys.executable).with_name("abstractruntime"))
TESTS_DIR = Path(__file__).resolve().parent
FAR = "2030-01-01T00:00:00+00:00"


def run(group, *args: str, cwd: Path | None = None, extra: dict[str, str] | None = None,
        pythonpath: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_") and k != "PYTHONPATH"}
    env.update(group.env)
    if pythonpath:
        env["PYTHONPATH"] = str(TESTS_DIR)
    env.update(extra or {})
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=60, cwd=cwd)


def stored(client, run_id: str) -> tuple:
    """What a refusal must leave as it was: the run hash (state, version, head, dispatch) and the ledger."""
    b = client.backend
    return (b.client.hgetall(b.keys.run(run_id)), b.client.xlen(b.keys.ledger(run_id)),
            b.client.zscore(b.keys.timers(), run_id))


def sleeping(client) -> str:
    rid = client.start("sleep_until", vars={"until": FAR})
    state = client.wait_for(rid, ["waiting"], timeout=30)
    assert state.waiting.reason.value == "until"
    return rid


def test_a_sleeping_run_is_not_woken_by_respond_resume_or_emit(group, client):
    rid = sleeping(client)
    since = client.get_state(rid).updated_at
    before = stored(client, rid)

    line = refused(run(group, "respond", rid, "yes"), 4, rid, f"until {FAR}", since, "wake")
    assert "respond refused" in line
    for key in ("totally-wrong-key", f"user:{rid}:sleep", ""):
        refused(run(group, "--json", "resume", rid, "--wait-key", key, "--payload", '"x"'), 4, rid, f"until {FAR}")
    # emit finds no run by a key a timer does not have; and by the engine, whatever the key.
    assert ok(run(group, "--json", "emit", f"until:{rid}")) == {"wait_key": f"until:{rid}", "resumed": []}
    assert stored(client, rid) == before

    # The Python client refuses the same way, with the wait's details on the error.
    from runtime.errors import WaitNotEnded

    with pytest.raises(WaitNotEnded) as info:
        client.respond(rid, "yes")
    assert (info.value.run_id, info.value.reason, info.value.until, info.value.since) == (rid, "until", FAR, since)
    with pytest.raises(WaitNotEnded):
        client.resume(rid, wait_key="anything", payload=1)
    with pytest.raises(WaitNotEnded):
        client.engine.resume(rid, wait_key=None, payload=1, action="emit")
    assert stored(client, rid) == before
    assert client.get_state(rid).status.value == "waiting"


def test_wake_now_wakes_it_and_the_ledger_records_who_and_why(group, client):
    rid = sleeping(client)
    before = stored(client, rid)
    refused(run(group, "wake", rid, "--reason", "x"), 2, "--now")
    refused(run(group, "wake", rid, "--now"), 2, "--reason")
    refused(run(group, "wake", rid, "--now", "--reason", "   "), 2, "--reason")
    refused(run(group, "wake", "no-such-run", "--now", "--reason", "x"), 3, "no-such-run")
    assert stored(client, rid) == before

    woke = ok(run(group, "--json", "wake", rid, "--now", "--reason", "skip the cool-down for the hotfix",
                  extra={"ABSTRACTRUNTIME_ACTOR": "alice@ops"}))
    assert woke["run_id"] == rid
    state = client.wait_for(rid, ["completed"], timeout=30)
    assert state.output is not None and "woke_at" in state.output
    records = client.get_ledger(rid)
    wakes = [r for r in records if (r.get("effect") or {}).get("type") == "operator_wake"]
    assert len(wakes) == 1
    w = wakes[0]
    assert w["status"] == "completed" and w["actor_id"] == "alice@ops"
    assert w["result"]["by"] == "alice@ops" and w["result"]["reason"] == "skip the cool-down for the hotfix"
    assert w["result"]["until"] == FAR and w["result"]["at"] and w["ended_at"]
    assert client.verify(rid)["ok"]  # the record is inside the hash chain
    # Woken once; a second wake finds nothing to wake.
    refused(run(group, "wake", rid, "--now", "--reason", "again"), 4, "not waiting")


def test_other_waits_refuse_what_does_not_end_them(group, client):
    asking = client.start("ask")
    client.wait_for(asking, ["waiting"], timeout=30)
    before = stored(client, asking)
    refused(run(group, "wake", asking, "--now", "--reason", "x"), 4, asking, "a person's answer to 'Go?'")
    refused(run(group, "resume", asking, "--wait-key", "wrong"), 4, "wait_key mismatch", asking)
    assert stored(client, asking) == before

    waiter = client.start("wait_event")
    client.wait_for(waiter, ["waiting"], timeout=30)
    before = stored(client, waiter)
    refused(run(group, "respond", waiter, "yes"), 4, waiter, "event 'evt:go'", "emit 'evt:go'")
    assert stored(client, waiter) == before

    parent = client.start("parent_of_asking")
    state = client.wait_for(parent, ["waiting"], timeout=30)
    child = state.waiting.details["sub_run_id"]
    before = stored(client, parent)
    refused(run(group, "respond", parent, "yes"), 4, parent, f"child run '{child}'")
    refused(run(group, "resume", parent, "--wait-key", f"subworkflow:{child}"), 4, parent)
    assert stored(client, parent) == before
    # What each waits for still ends it.
    ok(run(group, "--json", "respond", asking, "y"))
    ok(run(group, "--json", "resume", waiter, "--wait-key", "evt:go", "--payload", "1"))
    ok(run(group, "--json", "respond", child, "fine"))
    for rid in (asking, waiter, parent):
        assert client.wait_for(rid, ["completed"], timeout=30).status.value == "completed"


def test_a_raising_node_keeps_its_traceback_and_start_wait_fails(group, client):
    proc = run(group, "--json", "start", "raises", "--wait", "30")
    assert proc.returncode == 1, proc.stderr
    state = json.loads(proc.stdout)  # the run as it ended, on stdout
    rid = state["run_id"]
    assert state["status"] == "failed" and "node blew up" in state["error"]
    assert proc.stderr.strip() == f"error: run {rid} failed: {state['error']}"

    shown = ok(run(group, "status", rid, "--json"))  # --json after the command
    failure = shown["last_failure"]
    assert failure["where"] == "node" and failure["node"] == "boom" and failure["type"] == "RuntimeError"
    assert "Traceback (most recent call last)" in failure["traceback"]
    assert 'raise RuntimeError("node blew up")' in failure["traceback"]
    human = run(group, "status", rid)
    assert human.returncode == 0 and "RuntimeError: node blew up" in human.stdout and "traceback" in human.stdout
    # The worker's log has the traceback too, with the run id, once per attempt.
    log = group.log("w1")
    assert log.count(f"run {rid}: node boom raised RuntimeError") + log.count(f"run {rid} failed") >= 2
    assert 'raise RuntimeError("node blew up")' in log
    # The ledger stays the reference shape: no traceback in the hash-chained records.
    assert all("Traceback" not in json.dumps(r) for r in client.get_ledger(rid))


def test_an_effect_handler_that_raises_keeps_its_traceback(group, client):
    rid = client.start("llm_raises")
    state = client.wait_for(rid, ["completed", "failed"], timeout=60)
    assert state.status.value == "failed" and "the LLM client raised" in state.error
    failure = client.last_failure(rid)
    assert failure is not None and failure["where"] == "effect llm_call" and failure["node"] == "act"
    assert 'raise RuntimeError("the LLM client raised")' in failure["traceback"]
    log = group.log("w1")
    assert f"run {rid}: llm_call effect of node act raised RuntimeError" in log
    assert 'raise RuntimeError("the LLM client raised")' in log


def test_start_wait_timeout_prints_the_run_id_and_exits_7(group, client):
    proc = run(group, "--json", "start", "llm_slow5", "--wait", "0.5")  # its LLM call takes 5 s
    assert proc.returncode == 7, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["timed_out"] is True and seen["status"] == "running"
    assert client.get_state(seen["run_id"]).workflow_id == "llm_slow5"
    refused(proc, 7, seen["run_id"], "did not reach")
    human = run(group, "start", "llm_slow5", "--wait", "0.5")
    assert human.returncode == 7 and human.stdout.startswith("run ")


def test_a_run_cancelled_under_start_wait_exits_1(group, client):
    rid = "cancel-me-" + os.urandom(4).hex()
    waiting = subprocess.Popen([CLI, "--json", "start", "llm_slow5", "--run-id", rid, "--wait", "60"],
                               env={**{k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_")},
                                    **group.env, "PYTHONPATH": str(TESTS_DIR)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while not _exists(client, rid) and time.monotonic() - t0 < 30:
            time.sleep(0.05)
        client.cancel(rid, reason="not needed")
        out, err = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 1, err
    assert json.loads(out)["status"] == "cancelled"
    assert err.strip() == f"error: run {rid} cancelled: not needed"


def _exists(client, rid: str) -> bool:
    from runtime.errors import RunNotFound

    try:
        client.get_state(rid)
    except RunNotFound:
        return False
    return True


def test_no_arguments_print_the_help(group):
    proc = run(group)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith("Usage: abstractruntime") and "Commands:" in proc.stdout
    assert "Exit codes:" in proc.stdout and "\n  start " in proc.stdout


def test_the_cli_imports_workflow_modules_from_the_current_directory(group, client, tmp_path):
    (tmp_path / "myflows.py").write_text("import support.celery_scenarios  # registers 'ask'\n", encoding="utf-8")
    env = {"ABSTRACTRUNTIME_IMPORTS": "myflows"}
    started = ok(run(group, "--json", "start", "ask", cwd=tmp_path, extra=env))
    rid = started["run_id"]
    client.wait_for(rid, ["waiting"], timeout=30)
    # Elsewhere, the module is not found: the error names it and the setting.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    refused(run(group, "start", "ask", cwd=elsewhere, extra=env), 2, "myflows", "ABSTRACTRUNTIME_IMPORTS")

    # Read-only commands need no workflow module at all (here: one that does not exist).
    missing = {"ABSTRACTRUNTIME_IMPORTS": "no_such_module_anywhere"}
    assert ok(run(group, "--json", "status", rid, cwd=elsewhere, extra=missing))["status"] == "waiting"
    assert ok(run(group, "--json", "ledger", rid, cwd=elsewhere, extra=missing)) == client.get_ledger(rid)
    assert rid in [r["run_id"] for r in ok(run(group, "--json", "runs", "list", cwd=elsewhere, extra=missing))]
    assert ok(run(group, "--json", "runs", "count", cwd=elsewhere, extra=missing))["waiting"] >= 1
    assert ok(run(group, "--json", "verify", rid, cwd=elsewhere, extra=missing))["ok"] is True
    assert rid in [w["run_id"] for w in ok(run(group, "--json", "waiting", cwd=elsewhere, extra=missing))]
    # Answering and cancelling need none either.
    ok(run(group, "--json", "respond", rid, "y", cwd=elsewhere, extra=missing))
    assert client.wait_for(rid, ["completed"], timeout=30).output["answer"] == "y"
