"""The stack file (``{data_dir}/stack.json``) and stopping what it names (``abstractruntime stop``).

What runs is recorded by ``dev`` and by ``demo --keep``, so that ``stop`` can end it from
another shell, or after the supervising process was killed::

    {"by": "dev", "pid": 4242, "started": 81723, "data_dir": "/home/me/app/.abstractruntime",
     "processes": [{"name": "worker", "pid": 4250, "started": 81730}, ...],
     "redis": {"pid": 4243, "url": "unix:///home/me/app/.abstractruntime/redis/redis.sock"}}

``pid`` is the supervising process (null for ``demo --keep``), ``redis`` null when the stack
uses ``ABSTRACTRUNTIME_REDIS_URL``. Each process leads its own process group, so stopping the
group stops the pool processes it forked. ``started`` is the process's start time (clock
ticks after boot, from /proc; null elsewhere), so a pid the system gave to another process
since is never signalled. :mod:`workers.dev` runs the stack; its names for these functions
still import.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from stores._atomic import atomic_write
from stores.redis._server_process import alive as _alive
from stores.redis.embedded import stop_running

__all__ = ["STACK_FILE", "STOP_TIMEOUT_S", "read_stack", "write_stack", "live_stack", "remove_stack", "stop_groups",
           "stop_stack"]

#: File in the data folder naming the processes of a stack (see the module docstring).
STACK_FILE = "stack.json"
#: Seconds the children get after SIGTERM before SIGKILL (a warm Celery shutdown finishes its tasks).
STOP_TIMEOUT_S = 10.0
#: Seconds ``stop`` gives a supervising ``dev`` to stop its stack before it is killed.
SUPERVISOR_TIMEOUT_S = STOP_TIMEOUT_S * 2 + 10


# -- the stack file --------------------------------------------------------------------------------


def _start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot), or None when it cannot be told."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rpartition(b")")[2].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _same_process(pid: object, started: object) -> bool:
    """Whether ``pid`` still runs and is the process recorded (same start time, when known)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or not _alive(pid):
        return False
    return not isinstance(started, int) or _start_time(pid) in (None, started)


def read_stack(data_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The stack recorded in ``data_dir`` (see the module docstring), or None."""
    try:
        with open(Path(data_dir) / STACK_FILE, encoding="utf-8") as f:
            stack = json.load(f)
    except (OSError, ValueError):
        return None
    return stack if isinstance(stack, dict) else None


def write_stack(data_dir: str | os.PathLike[str], *, by: str, supervisor: int | None,
                processes: dict[str, int], redis: dict[str, Any] | None) -> None:
    """Record a stack in ``data_dir`` so that ``abstractruntime stop`` can stop it."""
    folder = Path(data_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    stack = {"by": by, "pid": supervisor, "started": _start_time(supervisor) if supervisor else None,
             "data_dir": str(folder),
             "processes": [{"name": n, "pid": p, "started": _start_time(p)} for n, p in processes.items()],
             "redis": redis}
    atomic_write(folder / STACK_FILE, json.dumps(stack, indent=1).encode(), fsync=False)


def live_stack(data_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The recorded stack when its supervisor or any of its processes still runs, else None."""
    stack = read_stack(data_dir)
    if stack is None:
        return None
    if _same_process(stack.get("pid"), stack.get("started")) and stack.get("pid") != os.getpid():
        return stack
    return stack if any(_same_process(p.get("pid"), p.get("started")) for p in _processes(stack)) else None


def _processes(stack: dict[str, Any]) -> list[dict[str, Any]]:
    found = stack.get("processes")
    return [p for p in found if isinstance(p, dict)] if isinstance(found, list) else []


def remove_stack(data_dir: Path) -> None:
    try:
        (data_dir / STACK_FILE).unlink()
    except FileNotFoundError:
        pass


# -- stopping process groups -----------------------------------------------------------------------


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to process group ``pgid``; False when the group is empty."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_gone(alive: Any, timeout_s: float, hurry: threading.Event | None = None) -> bool:
    """Poll ``alive()`` until it is False; whether that happened within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while alive():
        if time.monotonic() > deadline or (hurry is not None and hurry.is_set()):
            return False
        time.sleep(0.05)
    return True


def stop_groups(leaders: list[int], timeout_s: float, hurry: threading.Event | None = None,
                 children: tuple[subprocess.Popen[bytes], ...] = ()) -> None:
    """SIGTERM each group's leader, SIGKILL what is left of the groups after ``timeout_s`` (the
    leaders must be processes of ours, checked by the caller).

    Only the leader gets SIGTERM: a Celery worker stops its own pool processes, and a pool
    process that gets SIGTERM itself would be replaced, not stopped. Leaders that are our
    ``children`` are reaped while waiting (a zombie still counts as a member of its group).
    """
    for pgid in leaders:
        try:
            os.kill(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def left() -> bool:
        for child in children:
            child.poll()
        return any(signal_group(g, 0) for g in leaders)

    _wait_gone(left, timeout_s, hurry)
    for pgid in leaders:
        signal_group(pgid, signal.SIGKILL)


def stop_stack(data_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Stop what runs for ``data_dir``: the recorded stack, then the embedded redis-server.

    A supervising ``dev`` is asked to stop (SIGTERM) and does it in order; processes left
    without one (``demo --keep``, a killed ``dev``) are stopped here. Returns what was stopped,
    ``[{"name": ..., "pid": ...}]``; [] when nothing ran. Creates nothing.
    """
    folder = Path(data_dir).resolve()
    if not folder.is_dir():
        return []
    stopped: list[dict[str, Any]] = []
    stack = read_stack(folder) or {}
    running = [p for p in _processes(stack) if _same_process(p.get("pid"), p.get("started"))]
    recorded = stack.get("redis")
    redis_pid = recorded.get("pid") if isinstance(recorded, dict) else None
    if not isinstance(redis_pid, int) or not _alive(redis_pid):
        redis_pid = None
    supervisor = stack.get("pid")
    if _same_process(supervisor, stack.get("started")) and supervisor != os.getpid():
        assert isinstance(supervisor, int)
        os.kill(supervisor, signal.SIGTERM)  # it stops its processes and its server, in order
        if not _wait_gone(lambda: _alive(supervisor), SUPERVISOR_TIMEOUT_S):
            os.kill(supervisor, signal.SIGKILL)
        stopped.append({"name": f"abstractruntime {stack.get('by', 'dev')}", "pid": supervisor})
    # What is left: everything of a demo --keep, or of a dev that was killed.
    stop_groups([p["pid"] for p in running if _same_process(p["pid"], p.get("started"))], STOP_TIMEOUT_S)
    stopped += [{"name": str(p.get("name", "?")), "pid": p["pid"]} for p in running]
    pid = stop_running(folder)
    if pid is not None or (redis_pid is not None and not _alive(redis_pid)):
        stopped.append({"name": "redis-server", "pid": pid if pid is not None else redis_pid})
    remove_stack(folder)
    return stopped
