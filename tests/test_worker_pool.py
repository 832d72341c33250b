"""The default ``abstractruntime worker`` (``-P auto``, ``workers/supervisor.py``), from real
processes: a solo worker process per CPU for ticks and tools, a threads one for llm, supervised.

What a user depends on: runs of every kind complete on it; each queue is consumed by the pool
meant for it; a worker process that dies is replaced; one that cannot start stops the command
with its name; SIGTERM stops everything with exit 0.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from runtime import RunStatus

from support.celery_workers import TESTS_DIR
from support.processes import until

pytestmark = pytest.mark.timeout(150)

CLI = str(Path(sys.executable).with_name("abstractruntime"))
QUIET = ("--", "--without-gossip", "--without-mingle")


def start_cli_worker(g: Any, name: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    """``abstractruntime worker ARGS`` as a user starts it, its output in ``<folder>/<name>.log``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_")}
    env.update(g.env)
    env["PYTHONPATH"] = str(TESTS_DIR)
    g.folder.mkdir(parents=True, exist_ok=True)
    log_path = g.folder / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([CLI, "worker", *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, log_path


def stop(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)  # the supervisor alone: it stops its children
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
            return None
    return proc.returncode


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def consumers(client: Any, expected: int) -> dict[str, Any]:
    """Worker name -> (queue names, pool implementation), once ``expected`` workers answer."""
    seen: dict[str, Any] = {}

    def ask() -> bool:
        inspect = client.app.control.inspect(timeout=1.0)
        queues, stats = inspect.active_queues() or {}, inspect.stats() or {}
        seen.clear()
        for name, qs in queues.items():
            impl = (stats.get(name) or {}).get("pool", {}).get("implementation", "?")
            seen[name] = ({q["name"] for q in qs}, impl.rsplit(".", 1)[-1].split(":")[0])
        return len(seen) >= expected and all(v[1] != "?" for v in seen.values())

    assert until(ask, timeout=60), f"not {expected} worker processes answering: {seen}"
    return seen


def test_the_default_worker_runs_solo_processes_for_ticks_and_threads_for_llm(fresh):
    g = fresh(imports="support.celery_scenarios")
    proc, log_path = start_cli_worker(g, "auto", "-c", "2", "-n", f"auto.{g.prefix}@%h", *QUIET)
    try:
        client = g.client()
        host = socket.gethostname()
        workers = consumers(client, 3)
        s = g.settings()
        llm, cpu = {s.queue("llm")}, {s.queue(k) for k in ("ticks", "tools", "subworkflows", "timers", "maintenance")}
        # I expect two solo processes on every queue but llm, and one threads process on llm
        assert workers == {f"auto.{g.prefix}-1@{host}": (cpu, "solo"), f"auto.{g.prefix}-2@{host}": (cpu, "solo"),
                           f"auto.{g.prefix}-llm@{host}": (llm, "thread")}, workers
        # and runs of each kind to complete on them: LLM calls, tool calls, a child, a timer
        runs = {wf: client.start(wf) for wf in ("llm", "tool_loop", "parent_sync", "wait_past", "chain")}
        for wf, run_id in runs.items():
            state = client.wait_for(run_id, ["completed", "failed"], timeout=60)
            assert state.status == RunStatus.COMPLETED, (wf, state.error, log_path.read_text()[-3000:])
        assert state.output == {"visited": 5}
        # Ten LLM calls of 1.5 s each, started together, are served side by side by the threads:
        # more of them are in flight at one moment than two processes could hold
        slow = [client.start("llm_overlap") for _ in range(10)]
        ran = []
        for run_id in slow:
            state = client.wait_for(run_id, ["completed", "failed"], timeout=60)
            assert state.status == RunStatus.COMPLETED, state.error
            ran.append(state.output["llm"]["ran"])
        in_flight = max(sum(1 for a, b in ran if a <= start < b) for start, _ in ran)
        assert in_flight > 2, ran
    finally:
        code = stop(proc)
    # SIGTERM to the command: every worker process stops warm, and it exits 0
    assert code == 0, log_path.read_text()[-3000:]
    assert log_path.read_text().count("Warm shutdown") == 3


def test_a_worker_process_that_dies_is_started_again(fresh):
    g = fresh(imports="support.celery_scenarios")
    proc, log_path = start_cli_worker(g, "auto", "-c", "2", "-Q", "ticks,timers,maintenance", *QUIET)
    try:
        client = g.client()
        consumers(client, 2)
        first = children_of(proc.pid)
        assert len(first) == 2, first
        # Given a worker process killed after it has run a while (the OOM killer, say)
        from workers.supervisor import EARLY_S

        time.sleep(EARLY_S + 0.5)
        os.kill(first[0], signal.SIGKILL)
        # I expect it replaced, the command still running, and the runs still served
        assert until(lambda: len(set(children_of(proc.pid)) - set(first)) == 1, timeout=30), children_of(proc.pid)
        assert proc.poll() is None
        assert "was killed by signal 9; starting it again" in log_path.read_text()
        run_id = client.start("chain")
        assert client.wait_for(run_id, ["completed", "failed"], timeout=60).output == {"visited": 5}
    finally:
        assert stop(proc) == 0


def test_a_worker_process_that_cannot_start_stops_the_command_naming_it(fresh):
    g = fresh(imports="support.celery_scenarios")
    # Given a Celery option its worker processes refuse
    proc, log_path = start_cli_worker(g, "bad", "-c", "2", "-n", "bad@%h", "--", "--autoscale", "x,y")
    try:
        proc.wait(60)
    finally:
        stop(proc)
    # I expect exit 1, the process named, and none of them left
    text = log_path.read_text()
    assert proc.returncode == 1, text[-3000:]
    assert "error: worker process bad-" in text and "s after its start; stopping the others" in text, text[-3000:]
    assert children_of(proc.pid) == []
