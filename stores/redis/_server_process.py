"""The embedded redis-server as a process: is it there, does it answer, stop it.

The embedded Redis checks the server of a data folder by its pid (alive, not a zombie,
really a redis-server) and by sending ``INFO`` over a raw socket (which process answers,
and whether it is still loading its data; no client library needed), quotes the tail of
its log when it fails, and stops it with SIGTERM (SIGKILL after a timeout).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import time

from ._server_files import read_state, remove_state
from .urls import socket_address

__all__ = ["probe", "alive", "is_redis_process", "file_size", "log_tail", "stop_child", "stop_pid", "stop_running",
           "STOP_TIMEOUT_S"]

logger = logging.getLogger("stores.redis.embedded")  # the embedded server's one logger

#: Seconds a probe waits for the server's answer.
PROBE_TIMEOUT_S = 1.0
#: Seconds a stop waits after SIGTERM before it sends SIGKILL.
STOP_TIMEOUT_S = 10.0
_POLL_S = 0.01


def probe(url: str) -> tuple[int, bool] | None:
    """``(process_id, loading)`` from the server's INFO, or None when nothing answers there."""
    family, address = socket_address(url)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(PROBE_TIMEOUT_S)
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


def alive(pid: int) -> bool:
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


def is_redis_process(pid: int) -> bool:
    """Whether ``pid`` runs redis-server; True when it cannot be told (no /proc)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"redis-server" in f.read()
    except FileNotFoundError:
        return not os.path.isdir("/proc") and alive(pid)
    except OSError:
        return True


def file_size(path: str) -> int:
    """Size of a file in bytes; 0 when it cannot be read."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def log_tail(path: str, since: int = 0, lines: int = 20) -> str:
    """The last ``lines`` lines of a log, from byte ``since`` on (what the last launch wrote)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(os.fstat(f.fileno()).st_size - 8192, since, 0))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def stop_child(proc: subprocess.Popen[bytes], timeout_s: float, log_path: str, log_offset: int = 0) -> None:
    """Stop a redis-server child with SIGTERM (it flushes its AOF), SIGKILL after ``timeout_s``.

    An exit other than a clean one is logged with the tail of its log from ``log_offset`` on.
    """
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
                       proc.returncode, log_tail(log_path, log_offset))
    else:
        logger.info("Stopped embedded redis-server pid %d", proc.pid)


def stop_pid(pid: int, timeout_s: float) -> None:
    """Stop a redis-server that is not our child (adopted, or another process's) the same way."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(_POLL_S)
    logger.info("Stopped adopted embedded redis-server pid %d", pid)


def stop_running(data_dir: str | os.PathLike[str], timeout_s: float = STOP_TIMEOUT_S) -> int | None:
    """Stop the redis-server that serves ``data_dir``, whichever process started it (``abstractruntime stop``).

    SIGTERM (Redis flushes its AOF), SIGKILL after ``timeout_s``. Returns its pid, or None when
    none runs there; creates nothing.
    """
    directory = os.path.join(os.path.abspath(os.fspath(data_dir)), "redis")
    state = read_state(directory)
    if state is None:
        return None
    pid, url = state
    answer = probe(url)
    ours = alive(pid) and ((answer is not None and answer[0] == pid) or is_redis_process(pid))
    if ours:
        stop_pid(pid, timeout_s)
    remove_state(directory)
    return pid if ours else None
