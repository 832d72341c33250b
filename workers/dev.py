"""``abstractruntime dev`` and ``abstractruntime stop``: the local stack in one foreground command.

``dev`` starts the embedded redis-server and owns it (the server lives as long as the stack),
then one worker on every queue and beat as child processes attached to that server by its
URL. It prints their output line by line behind a prefix per process (``worker |``,
``beat   |``, ``redis  |``) and stops everything on Ctrl-C, SIGTERM, SIGHUP or
``abstractruntime stop``: the children with SIGTERM (SIGKILL after :data:`STOP_TIMEOUT_S`),
then the server. It exits 0 then; 1 when a process of the stack died on its own (the rest
is stopped and the message names it); 4 when a stack already runs for the data folder.

What runs is recorded in ``{data_dir}/stack.json``, which ``stop`` reads; that file and the
stopping of what it names are :mod:`workers._stack` (its public names import from here too).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import click

from stores.redis.embedded import shared_embedded
from stores.redis.urls import mask_url

from ._stack import (
    STACK_FILE,
    STOP_TIMEOUT_S,
    live_stack,
    read_stack,
    remove_stack,
    stop_groups,
    stop_stack,
    write_stack,
)
from .settings import WorkerSettings

__all__ = ["run_dev", "stop_stack", "read_stack", "write_stack", "live_stack", "STACK_FILE"]

#: Exit codes of ``dev`` besides 0 (the CLI's own numbers).
EXIT_DIED, EXIT_CONFLICT = 1, 4

_POLL_S = 0.2
_WIDTH = 6  # "worker", "beat  ", "redis ", "dev   "


# -- dev ---------------------------------------------------------------------------------------------


class _Dev:
    """One run of ``abstractruntime dev``: start, supervise, stop."""

    def __init__(self, env: dict[str, str], settings: WorkerSettings, *, concurrency: int | None,
                 loglevel: str) -> None:
        self.env, self.settings = env, settings
        self.concurrency, self.loglevel = concurrency, loglevel
        self.console_port: int | None = None
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
            if self.server is not None else f"{s.redis.url and mask_url(s.redis.url)} (ABSTRACTRUNTIME_REDIS_URL)"
        imports = ", ".join(s.imports) or "none (set ABSTRACTRUNTIME_IMPORTS to register your workflows)"
        lines = [
            "abstractruntime dev: the local stack; Ctrl-C stops all of it",
            f"  redis   {where}",
            f"  worker  pid {self.procs['worker'].pid}: every queue ({', '.join(s.queues)}); imports {imports}",
            f"  beat    pid {self.procs['beat'].pid}: the recovery sweep every {s.sweep_period_s:g}s",
        ]
        if "console" in self.procs:
            lines.append(f"  console pid {self.procs['console'].pid}: http://127.0.0.1:{self.console_port}/ "
                         "(no login: this machine only)")
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
        stop_groups([p.pid for p in self.procs.values()], STOP_TIMEOUT_S, self.hurry, tuple(self.procs.values()))
        for proc in self.procs.values():
            proc.wait()
        if self.server is not None:
            self.server.stop(timeout_s=1.0 if self.hurry.is_set() else STOP_TIMEOUT_S)
        self.done.set()
        for thread in self.threads:
            thread.join(5.0)
        stack = read_stack(self.data_dir)
        if stack is not None and stack.get("pid") == os.getpid():
            remove_stack(self.data_dir)
        what = [*self.procs, *(["redis-server"] if self.server is not None else [])]
        if what:
            self.say("dev", "stopped " + ", ".join(what))


@contextmanager
def _signals(handler: Any) -> Iterator[None]:
    wanted = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    before = {sig: signal.signal(sig, handler) for sig in wanted}
    try:
        yield
    finally:
        for sig, old in before.items():
            signal.signal(sig, old)


def run_dev(env: dict[str, str], *, concurrency: int | None = None, loglevel: str = "INFO",
            console_port: int | None = None) -> int:
    """Run the stack in the foreground until a signal; the exit code (see the module docstring).
    ``console_port``: the run console too (``abstractruntime console --no-auth``, on 127.0.0.1)."""
    settings = WorkerSettings.from_env(env)
    dev = _Dev(env, settings, concurrency=concurrency, loglevel=loglevel)
    dev.console_port = console_port
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
            if console_port:
                dev.spawn("console", ["console", "--no-auth", "--host", "127.0.0.1", "--port", str(console_port)])
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

