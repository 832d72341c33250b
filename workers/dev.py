"""``abstractruntime dev`` and ``abstractruntime stop``: the local stack in one foreground command.

``dev`` starts the embedded redis-server and owns it (the server lives as long as the stack),
then one worker on every queue and beat as child processes attached to that server by its
URL. It prints their output line by line behind a prefix per process (``worker |``,
``beat   |``, ``redis  |``) and stops everything on Ctrl-C, SIGTERM, SIGHUP or
``abstractruntime stop``: the children with SIGTERM (SIGKILL after :data:`STOP_TIMEOUT_S`),
then the server. It exits 0 then; 1 when a process of the stack died on its own (the rest
is stopped and the message names it); 4 when a stack already runs for the data folder.

What runs is recorded in ``{data_dir}/stack.json``, by ``dev`` and by ``demo --keep``, so that
``stop`` can end it from another shell, or after the supervising process was killed::

    {"by": "dev", "pid": 4242, "started": 81723, "data_dir": "/home/me/app/.abstractruntime",
     "processes": [{"name": "worker", "pid": 4250, "started": 81730}, ...],
     "redis": {"pid": 4243, "url": "unix:///home/me/app/.abstractruntime/redis/redis.sock"}}

``pid`` is the supervising process (null for ``demo --keep``), ``redis`` null when the stack
uses ``ABSTRACTRUNTIME_REDIS_URL``. Each process leads its own process group, so stopping the
group stops the pool processes it forked. ``started`` is the process's start time (clock
ticks after boot, from /proc; null elsewhere), so a pid the system gave to another process
since is never signalled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import click

from stores._atomic import atomic_write
from stores.redis.embedded import _alive, shared_embedded, stop_running

from .settings import WorkerSettings

__all__ = ["run_dev", "stop_stack", "read_stack", "write_stack", "live_stack", "STACK_FILE"]

#: File in the data folder naming the processes of a stack (see the module docstring).
STACK_FILE = "stack.json"
#: Seconds the children get after SIGTERM before SIGKILL (a warm Celery shutdown finishes its tasks).
STOP_TIMEOUT_S = 10.0
#: Seconds ``stop`` gives a supervising ``dev`` to stop its stack before it is killed.
SUPERVISOR_TIMEOUT_S = STOP_TIMEOUT_S * 2 + 10
#: Exit codes of ``dev`` besides 0 (the CLI's own numbers).
EXIT_DIED, EXIT_CONFLICT = 1, 4

_POLL_S = 0.2
_WIDTH = 6  # "worker", "beat  ", "redis ", "dev   "


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


def _remove_stack(data_dir: Path) -> None:
    try:
        (data_dir / STACK_FILE).unlink()
    except FileNotFoundError:
        pass


# -- stopping process groups -----------------------------------------------------------------------


def _signal_group(pgid: int, sig: int) -> bool:
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


def _stop_groups(leaders: list[int], timeout_s: float, hurry: threading.Event | None = None,
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
        return any(_signal_group(g, 0) for g in leaders)

    _wait_gone(left, timeout_s, hurry)
    for pgid in leaders:
        _signal_group(pgid, signal.SIGKILL)


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
    _stop_groups([p["pid"] for p in running if _same_process(p["pid"], p.get("started"))], STOP_TIMEOUT_S)
    stopped += [{"name": str(p.get("name", "?")), "pid": p["pid"]} for p in running]
    pid = stop_running(folder)
    if pid is not None or (redis_pid is not None and not _alive(redis_pid)):
        stopped.append({"name": "redis-server", "pid": pid if pid is not None else redis_pid})
    _remove_stack(folder)
    return stopped


# -- dev ---------------------------------------------------------------------------------------------


class _Dev:
    """One run of ``abstractruntime dev``: start, supervise, stop."""

    def __init__(self, env: dict[str, str], settings: WorkerSettings, *, concurrency: int | None,
                 loglevel: str) -> None:
        self.env, self.settings = env, settings
        self.concurrency, self.loglevel = concurrency, loglevel
        self.data_dir = Path(settings.redis.data_dir).resolve()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.threads: list[threading.Thread] = []
        self.server: Any = None  # the EmbeddedRedis this stack owns, when it uses the embedded one
        self.url = settings.redis.url
        self.stop = threading.Event()  # a signal asked to stop
        self.hurry = threading.Event()  # a second signal: kill, do not wait
        self.done = threading.Event()  # everything is stopped: the log followers finish
        self._out = threading.Lock()
        #: Why the stack stopped on its own (a process died), for the last line.
        self.failure: str | None = None

    # -- output ------------------------------------------------------------------------------------

    def say(self, name: str, line: str, *, err: bool = False) -> None:
        with self._out:
            click.echo(f"{name:<{_WIDTH}} | {line}", err=err)

    def _pump(self, name: str, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self.say(name, raw.decode("utf-8", "replace").rstrip())
        stream.close()

    def _follow_log(self, path: Path, offset: int) -> None:
        """Print the redis-server's log lines from ``offset`` on, until the stack is stopped."""
        try:
            f = open(path, "rb")
        except OSError:
            return
        with f:
            f.seek(offset)
            rest = b""
            while True:
                finished = self.done.is_set()
                chunk = f.read()
                rest += chunk
                *lines, rest = rest.split(b"\n")
                for line in lines:
                    self.say("redis", line.decode("utf-8", "replace").rstrip())
                if finished:
                    return
                if not chunk:
                    self.done.wait(_POLL_S)

    def _thread(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)

    # -- start -------------------------------------------------------------------------------------

    def on_signal(self, signum: int, frame: Any) -> None:
        if self.stop.is_set():
            self.hurry.set()
        self.stop.set()

    def start_redis(self) -> int:
        """Start (and own) the embedded server; 0, or an exit code when another process runs it."""
        if self.url is not None:
            return 0
        server = shared_embedded(self.data_dir, binary=self.settings.redis.server_binary)
        log = self.data_dir / "redis" / "redis.log"
        offset = log.stat().st_size if log.exists() else 0
        self.url = server.start()
        if not server.owned:
            server.stop()  # forgets it; it is not ours to stop
            click.echo(f"error: the embedded Redis of {self.data_dir} already runs (pid {server.pid}), started by "
                       f"another process; stop it with `abstractruntime stop` first", err=True)
            return EXIT_CONFLICT
        self.server = server
        self._thread(self._follow_log, log, offset)
        return 0

    def spawn(self, name: str, command: list[str]) -> None:
        env = dict(self.env)
        env.update(ABSTRACTRUNTIME_DATA_DIR=str(self.data_dir), PYTHONUNBUFFERED="1")
        if self.server is not None and self.url is not None:
            env["ABSTRACTRUNTIME_REDIS_URL"] = self.url  # the children use the server; they never own it
        # The workflow modules of ABSTRACTRUNTIME_IMPORTS are looked up from the current folder too.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH", "")) if p)
        proc = subprocess.Popen([sys.executable, "-m", "workers.cli", *command], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        assert proc.stdout is not None
        self._thread(self._pump, name, proc.stdout)

    def banner(self) -> None:
        s = self.settings
        where = f"embedded redis-server (pid {self.server.pid}) at {self.url}, data in {self.data_dir / 'redis'}" \
            if self.server is not None else f"{s.redis.url and _masked(s.redis.url)} (ABSTRACTRUNTIME_REDIS_URL)"
        imports = ", ".join(s.imports) or "none (set ABSTRACTRUNTIME_IMPORTS to register your workflows)"
        lines = [
            "abstractruntime dev: the local stack; Ctrl-C stops all of it",
            f"  redis   {where}",
            f"  worker  pid {self.procs['worker'].pid}: every queue ({', '.join(s.queues)}); imports {imports}",
            f"  beat    pid {self.procs['beat'].pid}: the recovery sweep every {s.sweep_period_s:g}s",
        ]
        # A CLI started in this folder finds the server by itself (./.abstractruntime); elsewhere
        # it needs the folder or the URL. Starting runs needs the workflow modules too.
        here = self.server is not None and self.data_dir == Path(".abstractruntime").resolve()
        exports = [] if here else ["ABSTRACTRUNTIME_REDIS_URL=<the URL above>" if self.server is None
                                   else f"ABSTRACTRUNTIME_DATA_DIR={self.data_dir}"]
        if s.imports:
            exports.append(f"ABSTRACTRUNTIME_IMPORTS={','.join(s.imports)}")
        if here:
            lines.append("In another shell in this folder, the CLI finds it by itself"
                         + ("; starting runs needs the workflows too:" if exports else ":"))
        else:
            lines.append("In another shell:")
        if exports:
            lines.append(f"  export {' '.join(exports)}")
        lines.append("  abstractruntime runs list")
        if here:
            lines.append(f"From another folder, add: export ABSTRACTRUNTIME_DATA_DIR={self.data_dir}")
        lines.append("Stop it with Ctrl-C here, or `abstractruntime stop` in another shell.")
        with self._out:
            for line in lines:
                click.echo(line)

    # -- supervise ---------------------------------------------------------------------------------

    def supervise(self) -> int:
        """Wait for a signal (0) or for a process to die (1); say when the worker is ready."""
        ready = False
        app: Any = None
        try:
            while not self.stop.wait(_POLL_S):
                for name, proc in self.procs.items():
                    if proc.poll() is not None:
                        self.failure = f"{name} exited with code {proc.returncode}"
                        break
                if self.failure is None and self.server is not None and not self.server.is_running:
                    self.failure = "the embedded redis-server exited"
                if self.failure is not None:
                    self.say("dev", f"{self.failure}; stopping the stack")
                    return EXIT_DIED
                if not ready:
                    if app is None:
                        from .app import create_app

                        app = create_app(replace(self.settings, redis=replace(self.settings.redis, url=self.url)))
                    ready = self._ready(app)
        finally:
            if app is not None:
                app.close()
        return 0

    def _ready(self, app: Any) -> bool:
        try:
            active = app.control.inspect(timeout=0.5).active_queues() or {}
        except Exception:  # the worker's broker connection may not be up yet: ask again
            return False
        consumed = {q.get("name") for queues in active.values() for q in queues or []}
        if not set(self.settings.queues) <= consumed:
            return False
        self.say("dev", f"ready: {', '.join(sorted(active))} consumes every queue")
        return True

    # -- stop --------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        running = [p for p in self.procs.values() if p.poll() is None]
        if running:
            self.say("dev", "stopping " + ", ".join(n for n, p in self.procs.items() if p.poll() is None))
        # Children that exited may have left pool processes in their group: those are stopped too.
        _stop_groups([p.pid for p in self.procs.values()], STOP_TIMEOUT_S, self.hurry, tuple(self.procs.values()))
        for proc in self.procs.values():
            proc.wait()
        if self.server is not None:
            self.server.stop(timeout_s=1.0 if self.hurry.is_set() else STOP_TIMEOUT_S)
        self.done.set()
        for thread in self.threads:
            thread.join(5.0)
        stack = read_stack(self.data_dir)
        if stack is not None and stack.get("pid") == os.getpid():
            _remove_stack(self.data_dir)
        what = [*self.procs, *(["redis-server"] if self.server is not None else [])]
        if what:
            self.say("dev", "stopped " + ", ".join(what))


def _masked(url: str) -> str:
    from stores.redis.settings import mask_url

    return mask_url(url)


@contextmanager
def _signals(handler: Any) -> Iterator[None]:
    wanted = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    before = {sig: signal.signal(sig, handler) for sig in wanted}
    try:
        yield
    finally:
        for sig, old in before.items():
            signal.signal(sig, old)


def run_dev(env: dict[str, str], *, concurrency: int | None = None, loglevel: str = "INFO") -> int:
    """Run the stack in the foreground until a signal; the exit code (see the module docstring)."""
    settings = WorkerSettings.from_env(env)
    dev = _Dev(env, settings, concurrency=concurrency, loglevel=loglevel)
    running = live_stack(dev.data_dir)
    if running is not None:
        who = f"abstractruntime {running.get('by', 'dev')}" + (f" (pid {running['pid']})" if running.get("pid") else "")
        click.echo(f"error: a stack already runs for {dev.data_dir}, started by {who}; "
                   f"stop it with `abstractruntime stop` first", err=True)
        return EXIT_CONFLICT
    with _signals(dev.on_signal):
        try:
            code = dev.start_redis()
            if code or dev.stop.is_set():
                return code
            worker = ["worker", "--loglevel", loglevel, "--name", "dev@%h"]
            if concurrency:
                worker += ["--concurrency", str(concurrency)]
            dev.spawn("worker", worker)
            dev.spawn("beat", ["beat", "--loglevel", loglevel])
            redis = {"pid": dev.server.pid, "url": dev.url} if dev.server is not None else None
            write_stack(dev.data_dir, by="dev", supervisor=os.getpid(),
                        processes={n: p.pid for n, p in dev.procs.items()}, redis=redis)
            dev.banner()
            code = dev.supervise()
        finally:
            dev.shutdown()
    if dev.failure is not None:
        click.echo(f"error: {dev.failure}; the stack is stopped", err=True)
    return code

