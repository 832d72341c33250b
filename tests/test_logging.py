"""What a worker writes to its log, read from real worker processes (docs/logging.md).

One line per task outcome naming the run, its workflow and node; nothing while idle (the
sweep and Celery's own per-task lines stay below INFO); the run id on every record logged
inside a task (seen in JSON lines); and never a run's vars or an effect's payload.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime import RunStatus

from support.celery_workers import ALL_QUEUES, READY_TIMEOUT_S, TESTS_DIR, WorkerGroup

pytestmark = pytest.mark.timeout(120)

CLI = str(Path(sys.executable).with_name("abstractruntime"))

#: Celery's own per-task lines ("Task abstractruntime.tick[...] received" / "succeeded in").
CELERY_TASK_LINE = re.compile(r"Task abstractruntime\.[a-z.]+\[[0-9a-f-]+\] (received|succeeded)")


def wait_for_line(path: Path, pattern: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        found = re.search(pattern, text)
        if found:
            return found.group(0)
        time.sleep(0.05)
    raise AssertionError(f"no line matching {pattern!r} in {path}:\n{text[-3000:]}")


def test_one_info_line_per_task_and_silence_when_idle(group, client):
    # Given a worker and beat (the sweep runs every second) that have been idle a while
    time.sleep(2.5)
    idle = group.log("w1").split(" ready.", 1)[1]  # after the banner, which lists the tasks
    # I expect neither the sweep nor Celery's own lines about it at INFO
    assert "sweep ->" not in idle and "abstractruntime.sweep" not in idle, idle[-2000:]

    # If a run parks on a question, is answered and finishes
    run_id = client.start("ask")
    assert client.wait_for(run_id, timeout=30).status == RunStatus.WAITING
    client.respond(run_id, "y")
    assert client.wait_for(run_id, ["completed", "failed"], timeout=30).status == RunStatus.COMPLETED
    log_path = group.folder / "w1.log"
    short = run_id[:8]
    # I expect one line per task: task, run, workflow, node, outcome, version, time
    park = wait_for_line(log_path, rf"INFO/\w+\] tick run={short} wf=ask node=act -> park v=\d+ [\d.]+m?s")
    finish = wait_for_line(log_path, rf"INFO/\w+\] tick run={short} wf=ask node=done -> finish v=\d+ [\d.]+m?s")
    assert int(finish.split(" v=")[1].split()[0]) > int(park.split(" v=")[1].split()[0])
    lines = [line for line in group.log("w1").splitlines() if f"run={short}" in line]
    assert len(lines) == 2, lines
    # and none of Celery's "received"/"succeeded" lines
    assert not CELERY_TASK_LINE.search(group.log("w1")), group.log("w1")[-2000:]
    # Beat's "Sending due task" lines for the sweep are quiet too
    assert "Sending due task" not in group.log("beat"), group.log("beat")[-2000:]


def test_effect_lines_name_their_queue_and_attempt_and_never_the_payload(group, client):
    # Given an LLM call whose payload holds an API key, and one that fails its first attempt
    keyed = client.start("llm_with_key", vars={"password": "hunter2-vars"})
    flaky = client.start("llm_flaky")
    for run_id in (keyed, flaky):
        assert client.wait_for(run_id, ["completed", "failed"], timeout=30).status == RunStatus.COMPLETED
    log_path = group.folder / "w1.log"
    # I expect the effect task's line with its queue kind, and the retried attempt's number
    wait_for_line(log_path, rf"effect\.llm run={keyed[:8]} wf=llm_with_key node=act -> next v=\d+")
    wait_for_line(log_path, rf"effect\.llm run={flaky[:8]} wf=llm_flaky node=act -> retry v=\d+")
    wait_for_line(log_path, rf"effect\.llm run={flaky[:8]} wf=llm_flaky node=act attempt=2 -> next v=\d+")
    # and neither the payload nor the vars anywhere in the log
    text = group.log("w1")
    assert "SECRET-4242" not in text and "hunter2" not in text


def _cli_worker(g: WorkerGroup, name: str, *args: str, extra: dict[str, str] | None = None
                ) -> tuple[subprocess.Popen[bytes], Path]:
    """``abstractruntime worker ARGS`` as a user starts it, its output in ``<folder>/<name>.log``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_")}
    env.update(g.env)
    env.update(extra or {})
    env["PYTHONPATH"] = str(TESTS_DIR)
    log_path = g.folder / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([CLI, "worker", *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, log_path


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_json_lines_carry_the_run_id_and_debug_brings_celery_lines_back(redis_server, tmp_path):
    # Given a worker started with JSON lines at DEBUG, through the CLI
    g = WorkerGroup(redis_server.url, tmp_path / "g", tick_backoff_s=0.05, tick_max_attempts=2)
    proc = None
    try:
        g.start_beat()
        proc, log_path = _cli_worker(g, "json", "--log-format", "json", "-l", "DEBUG", "-P", "solo",
                                     "-Q", ALL_QUEUES, "--", "--without-gossip", "--without-mingle",
                                     "--without-heartbeat")
        wait_for_line(log_path, r'"message": "[^"]+ ready\."', READY_TIMEOUT_S)
        client = g.client()
        # If a node raises (the engine logs a warning inside the tick task) and the run fails
        run_id = client.start("raises")
        assert client.wait_for(run_id, ["completed", "failed"], timeout=30).status == RunStatus.FAILED
        wait_for_line(log_path, rf"tick run={run_id[:8]} wf=raises node=boom attempt=2 -> failed")
        time.sleep(1.5)  # a sweep or two
        # I expect every logged line to be JSON (Celery's banner is printed, not logged)
        text = log_path.read_text()
        assert not re.search(r"^\[\d{4}-\d\d-\d\d ", text, re.M), text[-2000:]
        records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        mine = [r for r in records if r["run_id"] == run_id]
        # I expect every record logged inside the run's tasks to carry its full id: the
        # engine's warning, the outcome lines, and Celery's own lines about the task
        assert {"workers.engine", "workers.app", "celery.app.trace"} <= {r["logger"] for r in mine}, mine
        assert any(r["logger"] == "workers.engine" and r["level"] in ("WARNING", "ERROR") for r in mine), mine
        # and records outside a task to carry "-"
        ready = next(r for r in records if r["message"].endswith(" ready."))
        assert ready["run_id"] == "-" and ready["logger"] == "celery.apps.worker"
        # At DEBUG, Celery's per-task lines are back, and so is the idle sweep's line
        assert any(CELERY_TASK_LINE.search(r["message"]) for r in mine), mine
        assert any(r["message"].startswith("sweep -> leases=0 timers=0") and r["level"] == "DEBUG"
                   for r in records)
        assert {"time", "level", "logger", "process", "run_id", "message"} <= set(ready)
    finally:
        if proc is not None:
            _stop(proc)
        g.close()


def test_json_lines_inside_a_run_say_where_and_no_configured_secret_is_ever_written(redis_server, tmp_path):
    # Given a worker with JSON lines whose environment holds an API key and the webhook secret
    secrets = {"OPENAI_API_KEY": "sk-test-0123456789abcdef", "ABSTRACTRUNTIME_SLA_WEBHOOK_SECRET": "whsec-s3cr3t-42"}
    g = WorkerGroup(redis_server.url, tmp_path / "g", tick_backoff_s=0.05, tick_max_attempts=2,
                                    sla_webhook_secret=secrets["ABSTRACTRUNTIME_SLA_WEBHOOK_SECRET"])
    proc = None
    try:
        proc, log_path = _cli_worker(g, "json", "--log-format", "json", "-l", "INFO", "-P", "solo", "-Q", ALL_QUEUES,
                                     "--", "--without-gossip", "--without-mingle", "--without-heartbeat",
                                     extra={"OPENAI_API_KEY": secrets["OPENAI_API_KEY"]})
        wait_for_line(log_path, r'"message": "[^"]+ ready\."', READY_TIMEOUT_S)
        client = g.client()
        # If a node logs both secrets and raises with one of them in its message
        run_id = client.start("leaky")
        assert client.wait_for(run_id, ["completed", "failed"], timeout=30).status == RunStatus.FAILED
        wait_for_line(log_path, rf"tick run={run_id[:8]} wf=leaky node=leak attempt=2 -> failed")
        text = log_path.read_text()
        # I expect neither secret anywhere in the log, and the redaction marker where they were
        for value in secrets.values():
            assert value not in text
        records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        leak = [r for r in records if r["logger"] == "user.node"]
        assert leak and all("[redacted]" in r["message"] for r in leak)
        # and every record logged inside the run's ticks to say which run, workflow, node,
        # step, attempt and Celery task it belongs to
        mine = [r for r in records if r["run_id"] == run_id and r["logger"] != "celery.app.trace"]
        assert mine and all(r.get("workflow") == "leaky" and r.get("node") == "leak" and r.get("task_id")
                            and r.get("attempt") in (1, 2) and isinstance(r.get("step"), int) for r in mine), mine
        assert {r["attempt"] for r in mine} == {1, 2} and len({r["task_id"] for r in mine}) == 2
        assert not re.search(r"^\[\d{4}-\d\d-\d\d ", text, re.M)  # every logged line is JSON (the banner is printed)
    finally:
        if proc is not None:
            _stop(proc)
        g.close()
