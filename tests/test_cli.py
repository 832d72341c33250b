"""The ``abstractruntime`` console script, run as a user runs it, against a real worker and beat.

Each command runs in a subprocess with ``--json``; a bad input must give one line on
stderr naming the problem, a non-zero exit code, and no change in Redis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from runtime import RunStatus

from support.cli import ok, refused
from support.redis_server import free_port

pytestmark = pytest.mark.timeout(180)

CLI = str(Path(sys.executable).with_name("abstractruntime"))



def run(group, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_")}
    full_env.update(group.env if env is None else env)
    full_env["PYTHONPATH"] = str(Path(__file__).parent)
    return subprocess.run([CLI, *args], env=full_env, capture_output=True, text=True, timeout=timeout)


def snapshot(client) -> tuple:
    """Everything a refused command must leave as it was: run count and each run's version."""
    k = client.backend.keys
    ids = sorted(i.decode() for i in client.backend.client.zrange(k.by_updated(), 0, -1))
    return tuple((rid, client.backend.client.hget(k.run(rid), "v")) for rid in ids)


def test_every_command_has_help(group):
    commands = ["worker", "beat", "start", "status", "ledger", "verify", "resume", "respond", "emit", "cancel", "retry",
                "runs", "runs list", "runs count", "waiting", "doctor", "demo"]
    top = run(group, "--help")
    assert top.returncode == 0 and "Usage: abstractruntime" in top.stdout
    for command in commands:
        proc = run(group, *command.split(), "--help")
        assert proc.returncode == 0 and "Usage:" in proc.stdout, (command, proc.stderr)
    assert "ABSTRACTRUNTIME_REDIS_URL" in top.stdout  # every option names its variable


def test_start_status_ledger_verify(group, client):
    run_id = f"cli-{uuid.uuid4().hex[:8]}"
    started = ok(run(group, "--json", "start", "chain", "--vars", '{"context": {"who": "cli"}}', "--run-id", run_id))
    assert started == {"run_id": run_id, "workflow_id": "chain"}
    client.wait_for(run_id, ["completed"], timeout=30)
    status = ok(run(group, "--json", "status", run_id))
    assert status["status"] == "completed" and status["output"] == {"visited": 5}
    assert status["vars"]["context"] == {"who": "cli"}
    records = ok(run(group, "--json", "ledger", run_id))
    assert [(r["node_id"], r["status"]) for r in records] == [("n4", "completed")]
    assert ok(run(group, "--json", "verify", run_id))["ok"] is True
    human = run(group, "status", run_id)
    assert human.returncode == 0 and "completed" in human.stdout and run_id in human.stdout


def test_start_with_vars_from_a_file_and_wait(group, tmp_path):
    path = tmp_path / "vars.json"
    path.write_text('{"x": 30}')
    state = ok(run(group, "--json", "start", "branch", "--vars", f"@{path}", "--wait", "30"))
    assert state["status"] == "completed" and state["output"] == {"path": "big"}


def test_bad_input_is_one_line_a_code_and_no_change(group, client):
    before = snapshot(client)
    refused(run(group, "--json", "start", "chain", "--vars", "{not json"), 2, "--vars is not valid JSON")
    refused(run(group, "--json", "start", "chain", "--vars", "[1, 2]"), 2, "--vars must be a JSON object")
    refused(run(group, "--json", "start", "no_such_workflow"), 2, "no_such_workflow", "not registered")
    refused(run(group, "--json", "start", "chain", "--run-id", "bad id!"), 2, "bad id!")
    refused(run(group, "--json", "status", "no-such-run"), 3, "no-such-run")
    refused(run(group, "--json", "ledger", "no-such-run"), 3, "no-such-run")
    refused(run(group, "--json", "resume", "no-such-run", "--wait-key", "k"), 3, "no-such-run")
    refused(run(group, "--json", "start", "chain", "--vars", "@/no/such/file.json"), 2, "/no/such/file.json")
    assert snapshot(client) == before


def test_resume_respond_emit_and_cancel(group, client):
    asking = client.start("ask")
    client.wait_for(asking, ["waiting"], timeout=30)
    before = snapshot(client)
    refused(run(group, "--json", "resume", asking, "--wait-key", "wrong-key", "--payload", '"y"'), 4, "wrong-key")
    refused(run(group, "--json", "resume", asking, "--wait-key", "x", "--payload", "{oops"), 2,
            "--payload is not valid JSON")
    assert snapshot(client) == before  # nothing changed

    waiting = ok(run(group, "--json", "waiting"))
    mine = [w for w in waiting if w["run_id"] == asking]
    assert mine and mine[0]["prompt"] == "Go?" and mine[0]["choices"] == ["y", "n"]

    ok(run(group, "--json", "respond", asking, "y"))
    state = client.wait_for(asking, ["completed"], timeout=30)
    assert state.output["answer"] == "y"
    refused(run(group, "--json", "respond", asking, "again"), 4, "not waiting")

    waiter = client.start("wait_event")
    client.wait_for(waiter, ["waiting"], timeout=30)
    emitted = ok(run(group, "--json", "emit", "evt:go", "--payload", '{"v": 3}'))
    assert emitted == {"wait_key": "evt:go", "resumed": [waiter]}
    assert client.wait_for(waiter, ["completed"], timeout=30).output["evt"] == {"v": 3}

    second = client.start("ask")
    client.wait_for(second, ["waiting"], timeout=30)
    state = client.get_state(second)
    resumed = ok(run(group, "--json", "resume", second, "--wait-key", state.waiting.wait_key, "--payload", '"n"'))
    assert resumed["status"] == "running"
    assert client.wait_for(second, ["completed"], timeout=30).output["answer"] == "n"

    parked = client.start("ask")
    client.wait_for(parked, ["waiting"], timeout=30)
    assert ok(run(group, "--json", "cancel", parked, "--reason", "no longer needed")) == {"cancelled": [parked]}
    state = client.get_state(parked)
    assert state.status == RunStatus.CANCELLED and state.error == "no longer needed"
    assert ok(run(group, "--json", "cancel", parked)) == {"cancelled": []}


def test_runs_list_and_count(group, client):
    rid = client.start("chain")
    client.wait_for(rid, ["completed"], timeout=30)
    listed = ok(run(group, "--json", "runs", "list", "--status", "completed", "--workflow", "chain", "--limit", "500"))
    assert rid in [r["run_id"] for r in listed]
    counted = ok(run(group, "--json", "runs", "count", "--workflow", "chain"))
    assert counted["count"] == client.count(workflow_id="chain")
    by_status = ok(run(group, "--json", "runs", "count"))
    assert set(by_status) == {s.value for s in RunStatus} and by_status["completed"] >= 1
    refused(run(group, "--json", "runs", "list", "--status", "sleeping"), 2)
    # Every option is also a variable: ABSTRACTRUNTIME_<COMMAND>_<OPTION> when it has no name of its own.
    one = ok(run(group, "--json", "runs", "list", env={**group.env, "ABSTRACTRUNTIME_RUNS_LIST_LIMIT": "1"}))
    assert len(one) == 1


def test_ledger_follow_prints_records_as_they_are_committed(group, client):
    from datetime import datetime, timedelta, timezone

    until = (datetime.now(timezone.utc) + timedelta(seconds=6)).isoformat()
    rid = client.start("sleep_until", vars={"until": until})
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_")}
    env.update(group.env)
    env["PYTHONPATH"] = str(Path(__file__).parent)
    proc = subprocess.Popen([CLI, "--json", "ledger", rid, "--follow"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = json.loads(proc.stdout.readline())
        # The first record arrives while the run still sleeps: followed, not read at the end.
        assert first["node_id"] == "sleep" and first["status"] == "started"
        assert client.get_state(rid).status == RunStatus.WAITING
        rest = [json.loads(line) for line in proc.stdout]
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert [(r["node_id"], r["status"]) for r in [first, *rest]] == [
        ("sleep", "started"), ("sleep", "waiting"), ("up", "completed")]


def test_verify_names_the_first_bad_record(group, client):
    rid = client.start("agent")
    client.wait_for(rid, ["waiting"], timeout=30)
    key = client.backend.keys.ledger(rid)
    entries = client.backend.client.xrange(key)
    client.backend.client.xdel(key, entries[1][0])  # a record vanishes from the middle
    proc = run(group, "--json", "verify", rid)
    assert proc.returncode == 6
    report = json.loads(proc.stdout)
    assert report["ok"] is False and report["bad"][0]["run_id"] == rid and report["bad"][0]["first_bad_index"] == 1
    human = run(group, "verify", rid)
    assert human.returncode == 6 and f"run {rid}: chain broken at record 1" in human.stdout
    proc = run(group, "--json", "verify", "--all")
    assert proc.returncode == 6
    report = json.loads(proc.stdout)
    assert report["checked"] >= 2 and [b["run_id"] for b in report["bad"]] == [rid]
    refused(run(group, "verify"), 2, "RUN_ID or --all")
    client.cancel(rid)


def test_doctor_with_everything_up(group):
    report = ok(run(group, "--json", "doctor"))
    by_name = {c["check"]: c for c in report["checks"]}
    assert report["ok"] is True
    for name in ("broker", "queue ticks", "queue llm", "queue timers", "queue maintenance", "beat"):
        assert by_name[name]["status"] == "ok", by_name[name]
    assert by_name["redis"]["status"] in ("ok", "warn")  # the test server has no append-only file


def test_a_redis_that_is_down_is_one_line_and_exit_5(group, tmp_path):
    port = free_port()
    env = {**group.env, "ABSTRACTRUNTIME_REDIS_URL": f"redis://:s3cret@127.0.0.1:{port}/0",
           "ABSTRACTRUNTIME_BROKER_URL": f"redis://127.0.0.1:{port}/1"}
    t0 = time.monotonic()
    proc = run(group, "--json", "status", "any-run", env=env)
    refused(proc, 5, f"127.0.0.1:{port}", "Redis is unavailable")
    assert "s3cret" not in proc.stderr
    refused(run(group, "--json", "start", "chain", env=env), 5)
    doctor = run(group, "--json", "doctor", env=env)
    assert doctor.returncode == 1 and json.loads(doctor.stdout)["checks"][0]["status"] == "fail"
    print(f"\nCLI gave up on a Redis that is down in {time.monotonic() - t0:.1f}s for three commands")


# -- the worker command ----------------------------------------------------------------------------


def test_a_worker_whose_import_fails_names_the_setting_before_celery_starts(group, tmp_path):
    # Given a module that is not installed
    env = {**group.env, "ABSTRACTRUNTIME_IMPORTS": "support.celery_scenarios,myapp.flows"}
    for command in ("worker", "beat"):
        proc = run(group, command, env=env)
        # I expect one line naming the module and the setting, exit 2, and no Celery banner
        refused(proc, 2, "cannot import 'myapp.flows' named by "
                "ABSTRACTRUNTIME_IMPORTS=support.celery_scenarios,myapp.flows", "No module named 'myapp'")
        assert proc.stdout == "", proc.stdout
    # Given a module in the current folder that fails on an import of its own
    (tmp_path / "cwdflows.py").write_text("import not_installed_anywhere_xyz\n")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_")}
    full_env.update({**group.env, "ABSTRACTRUNTIME_IMPORTS": "cwdflows"})
    proc = subprocess.run([CLI, "worker"], env=full_env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    # I expect it found there (as `celery -A` would), and the failure inside it named
    refused(proc, 2, "cannot import 'cwdflows'", "No module named 'not_installed_anywhere_xyz'")


def _start_worker(group, log_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_")}
    full_env.update(group.env if env is None else env)
    full_env["PYTHONPATH"] = str(Path(__file__).parent)
    with open(log_path, "wb") as log:
        return subprocess.Popen([CLI, "worker", "-P", "solo", *args], env=full_env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _wait_ready(proc: subprocess.Popen, log_path: Path, timeout: float = 30.0) -> str:
    """The worker's name, from its "NAME ready." line."""
    import re

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        found = re.search(r"\] (\S+) ready\.", text)
        if found:
            return found.group(1)
        assert proc.poll() is None, f"worker exited with {proc.returncode}:\n{text[-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"worker not ready in {timeout}s:\n{text[-3000:]}")


def _stop_workers(*procs: subprocess.Popen) -> None:
    import signal

    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_worker_names_are_unique_per_process_and_celery_options_pass_after_dashes(group, client, tmp_path):
    import socket

    host = socket.gethostname()
    quiet = ("--without-gossip", "--without-mingle", "--without-heartbeat")
    # Given a worker with the default name whose log file is a Celery option given after `--`,
    # and one named with -n
    logfile = tmp_path / "celery-own.log"
    first = _start_worker(group, tmp_path / "first.out", "-Q", "ticks,timers", "--", *quiet,
                          "--logfile", str(logfile))
    second = _start_worker(group, tmp_path / "second.out", "-Q", "ticks", "-n", f"mine.{group.prefix}@%h",
                           "--", *quiet)
    try:
        # I expect the first named after its queue kinds and its process id, its log in that file
        assert _wait_ready(first, logfile) == f"ticks-timers.{first.pid}@{host}"
        assert "ready." not in (tmp_path / "first.out").read_text()
        # and -n to win
        assert _wait_ready(second, tmp_path / "second.out") == f"mine.{group.prefix}@{host}"
        replies = {name for reply in client.app.control.ping(timeout=2.0) for name in reply}
        assert {f"ticks-timers.{first.pid}@{host}", f"mine.{group.prefix}@{host}"} <= replies, replies
    finally:
        _stop_workers(first, second)
    # An option the command does not know, without `--`, is refused by name
    proc = run(group, "worker", "--max-tasks-per-child", "100")
    refused(proc, 2, "--max-tasks-per-child")


@pytest.mark.timeout(120)
def test_two_workers_on_one_host_both_run_on_rabbitmq(group, tmp_path):
    import socket
    from urllib.parse import urlparse

    amqp = os.environ.get("ABSTRACTRUNTIME_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
    parsed = urlparse(amqp)
    try:
        socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 5672), timeout=1.0).close()
    except OSError:
        pytest.skip(f"RabbitMQ is not reachable at {parsed.hostname}:{parsed.port or 5672}; "
                    "set ABSTRACTRUNTIME_TEST_AMQP_URL to run this test")
    # Given two workers started alike on one host, RabbitMQ as the broker (celery@HOST for both
    # would lock the second out of its control queue: 405 RESOURCE_LOCKED, and it stops)
    tag = uuid.uuid4().hex[:8]
    queues = {f"ABSTRACTRUNTIME_QUEUE_{k.upper()}": f"t{tag}-{k}"
              for k in ("ticks", "llm", "tools", "subworkflows", "timers", "maintenance")}
    env = {**group.env, **queues, "ABSTRACTRUNTIME_BROKER_URL": amqp}
    procs = [_start_worker(group, tmp_path / f"w{i}.out", "-Q", "ticks", "--", "--without-gossip",
                           "--without-mingle", env=env) for i in (1, 2)]
    try:
        names = [_wait_ready(p, tmp_path / f"w{i}.out") for i, p in enumerate(procs, 1)]
        # I expect both to be up a while later, under two names, and both to answer a ping
        time.sleep(2.0)
        assert all(p.poll() is None for p in procs), [(tmp_path / f"w{i}.out").read_text()[-2000:] for i in (1, 2)]
        assert len(set(names)) == 2, names
        from workers.app import create_app
        from workers.settings import WorkerSettings

        app = create_app(WorkerSettings.from_env(env), main=f"ping-{tag}")
        replies = {name for reply in app.control.ping(destination=names, timeout=3.0) for name in reply}
        assert replies == set(names), replies
    finally:
        _stop_workers(*procs)
        from kombu import Connection

        with Connection(amqp) as conn:
            channel = conn.channel()
            for name in queues.values():
                try:
                    channel.queue_delete(name)
                except Exception:  # a queue nobody declared
                    channel = conn.channel()
