"""``abstractruntime dev`` and ``stop``, and "nothing starts by surprise": real processes, real Redis.

Each test runs the installed CLI in a folder of its own with no ``ABSTRACTRUNTIME_*``
variable set, as a newcomer would, and checks by pid and process group that nothing of the
stack is left running at its end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from support.processes import HAS_PROC, NEEDS_PROC, Background, mentioning, process_group
from support.processes import alive as _alive

CLI = str(Path(sys.executable).with_name("abstractruntime"))
NO_DEPLOYMENT = "error: no deployment here: set ABSTRACTRUNTIME_REDIS_URL or run `abstractruntime dev`"

pytestmark = pytest.mark.skipif(not HAS_PROC, reason=NEEDS_PROC)


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_")}
    env.update(HOME=str(home), PYTHONPATH="", **extra)
    return env


def cli(folder: Path, *args: str, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], cwd=folder, env=clean_env(folder, **extra), capture_output=True,
                          text=True, timeout=timeout)


def leftovers(stack: dict[str, Any], redis_pid: int | None) -> list[str]:
    """What of a recorded stack still runs: its processes, their process groups, its Redis."""
    left = []
    for p in stack["processes"]:
        left += [f"{p['name']} group: {pid}" for pid in process_group(p["pid"])]
    if redis_pid is not None and _alive(redis_pid):
        left.append(f"redis-server {redis_pid}")
    return left


class Dev(Background):
    """``abstractruntime dev`` in the background; its output collected line by line."""

    def __init__(self, folder: Path, *args: str, **extra: str) -> None:
        self.folder = folder
        super().__init__([CLI, "dev", "--concurrency", "1", *args], cwd=folder, env=clean_env(folder, **extra))

    def stack(self) -> dict[str, Any]:
        stack = json.loads((self.folder / ".abstractruntime" / "stack.json").read_text())
        assert isinstance(stack, dict)
        return stack

    def kill_all(self) -> None:
        """After a failed test: nothing of this stack may outlive it."""
        self.kill()
        cli(self.folder, "stop")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    return project


@pytest.mark.timeout(120)
def test_commands_about_runs_refuse_where_nothing_runs(folder):
    for args in (["status", "r1"], ["ledger", "r1"], ["runs", "list"], ["runs", "count"], ["verify", "--all"],
                 ["waiting"], ["--json", "runs", "list"],
                 # and those that change runs: a run made on a server started for one command is stranded
                 ["start", "demo.chain"], ["respond", "r1", "yes"], ["resume", "r1", "--wait-key", "k"],
                 ["emit", "k"], ["wake", "r1", "--now", "--reason", "x"], ["cancel", "r1"]):
        out = cli(folder, *args)
        assert out.returncode == 5, (args, out.stdout, out.stderr)
        assert out.stderr.startswith(NO_DEPLOYMENT) and len(out.stderr.splitlines()) == 1, (args, out.stderr)
        assert out.stdout == ""
    stopped = cli(folder, "stop")
    assert stopped.returncode == 0 and stopped.stdout.startswith("nothing runs for"), stopped
    # Nothing was created: no data folder, no server.
    assert list(folder.iterdir()) == []


@pytest.mark.timeout(180)
def test_dev_runs_the_stack_and_stop_from_another_shell_ends_all_of_it(folder):
    dev = Dev(folder, ABSTRACTRUNTIME_IMPORTS="workers.demo_workflows")
    try:
        dev.wait_for("dev    | ready: ")
        stack = dev.stack()
        assert stack["by"] == "dev" and stack["pid"] == dev.proc.pid
        assert [p["name"] for p in stack["processes"]] == ["worker", "beat"]
        redis_pid = stack["redis"]["pid"]
        assert _alive(redis_pid) and all(_alive(p["pid"]) for p in stack["processes"])
        for prefix in ("redis  | ", "worker | ", "beat   | "):
            assert any(line.startswith(prefix) for line in dev.lines), (prefix, dev.output)
        assert "export ABSTRACTRUNTIME_IMPORTS=workers.demo_workflows" in dev.output

        # From another shell in the same folder, with nothing else set, runs go through the stack.
        started = cli(folder, "--json", "start", "demo.chain", "--wait", "30",
                      ABSTRACTRUNTIME_IMPORTS="workers.demo_workflows")
        assert started.returncode == 0, started.stderr
        assert json.loads(started.stdout)["status"] == "completed"
        counted = cli(folder, "--json", "runs", "count", "--status", "completed")
        assert counted.returncode == 0 and json.loads(counted.stdout)["count"] == 1, counted
        # A second stack on the same folder is refused.
        second = cli(folder, "dev", timeout=60)
        assert second.returncode == 4 and "a stack already runs for" in second.stderr, second

        stopped = cli(folder, "stop", timeout=90)
        assert stopped.returncode == 0, stopped.stderr
        assert f"stopped abstractruntime dev (pid {dev.proc.pid})" in stopped.stdout
        for name in ("worker", "beat", "redis-server"):
            assert f"stopped {name} (pid " in stopped.stdout, stopped.stdout
        assert dev.exit_code() == 0, dev.output
        assert "dev    | stopped worker, beat, redis-server" in dev.output
        assert leftovers(stack, redis_pid) == [] and mentioning(str(folder)) == []
        assert not (folder / ".abstractruntime" / "stack.json").exists()
    finally:
        dev.kill_all()


@pytest.mark.timeout(120)
def test_a_process_that_dies_stops_the_stack_and_is_named(folder):
    dev = Dev(folder)
    try:
        dev.wait_for("dev    | ready: ")
        stack = dev.stack()
        beat = next(p["pid"] for p in stack["processes"] if p["name"] == "beat")
        os.kill(beat, signal.SIGKILL)
        assert dev.exit_code() == 1
        assert "error: beat exited with code -9; the stack is stopped" in dev.output
        assert leftovers(stack, stack["redis"]["pid"]) == [] and mentioning(str(folder)) == []
    finally:
        dev.kill_all()


@pytest.mark.timeout(120)
def test_stop_ends_what_a_killed_dev_left_behind(folder):
    dev = Dev(folder)
    try:
        dev.wait_for("dev    | ready: ")
        stack = dev.stack()
        redis_pid = stack["redis"]["pid"]
        os.kill(dev.proc.pid, signal.SIGKILL)  # no chance to stop anything
        dev.exit_code()
        assert _alive(redis_pid)  # orphaned: its own session, not killed with dev
        stopped = cli(folder, "--json", "stop", timeout=90)
        assert stopped.returncode == 0, stopped.stderr
        names = {s["name"] for s in json.loads(stopped.stdout)["stopped"]}
        assert "redis-server" in names and names <= {"worker", "beat", "redis-server"}
        assert leftovers(stack, redis_pid) == [] and mentioning(str(folder)) == []
        again = cli(folder, "stop")
        assert again.returncode == 0 and again.stdout.startswith("nothing runs for")
    finally:
        dev.kill_all()


@pytest.mark.timeout(300)
def test_demo_keep_records_its_processes_and_stop_ends_them(folder):
    kept = cli(folder, "demo", "--keep", "--wait-s", "1", timeout=240)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "abstractruntime stop" in kept.stdout and "kill " not in kept.stdout
    assert "--address=127.0.0.1 --basic-auth=" in kept.stdout
    stack = json.loads((folder / ".abstractruntime" / "stack.json").read_text())
    redis_pid = stack["redis"]["pid"]
    try:
        assert stack["by"] == "demo --keep" and stack["pid"] is None and len(stack["processes"]) == 7
        assert all(_alive(p["pid"]) for p in stack["processes"]) and _alive(redis_pid)
        # The read-only commands use the server that was left running, and leave it running.
        counted = cli(folder, "--json", "runs", "count", "--status", "completed")
        assert counted.returncode == 0 and json.loads(counted.stdout)["count"] == 10, counted
        assert _alive(redis_pid)
        # A dev on the same folder is refused while it runs.
        refused = cli(folder, "dev")
        assert refused.returncode == 4 and "a stack already runs" in refused.stderr, refused
        stopped = cli(folder, "stop", timeout=90)
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.count("stopped ") == 8 and f"stopped redis-server (pid {redis_pid})" in stopped.stdout
        assert leftovers(stack, redis_pid) == [] and mentioning(str(folder)) == []
    finally:
        cli(folder, "stop", timeout=90)


@pytest.mark.timeout(180)
def test_dev_serves_the_console_when_asked(folder):
    import urllib.request

    pytest.importorskip("starlette")
    from support.redis_server import free_port

    port = free_port()
    dev = Dev(folder, "--console-port", str(port), ABSTRACTRUNTIME_IMPORTS="workers.demo_workflows")
    try:
        dev.wait_for("dev    | ready: ")
        assert [p["name"] for p in dev.stack()["processes"]] == ["worker", "beat", "console"]
        assert f"http://127.0.0.1:{port}/" in dev.output
        started = cli(folder, "--json", "start", "demo.chain", "--wait", "30",
                      ABSTRACTRUNTIME_IMPORTS="workers.demo_workflows")
        run_id = json.loads(started.stdout)["run_id"]
        deadline = time.monotonic() + 30
        while True:  # (the console may still be starting)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/runs", timeout=5) as response:
                    page = response.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        assert run_id in page  # no login on this machine's own stack
        assert cli(folder, "stop", timeout=90).returncode == 0
        assert dev.exit_code() == 0, dev.output
    finally:
        dev.kill_all()
