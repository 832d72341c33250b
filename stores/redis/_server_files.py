"""The files of an embedded Redis's folder (``{data_dir}/redis/``) that say how it runs.

``redis.conf`` is written at each start; ``server.json`` names the pid and URL of the
server that serves the folder (and ``detached`` when it was left running on purpose); the
unix socket is there too unless the path is too long for one. The AOF, log, lock and
``version.json`` (:mod:`stores.redis._server_binary`) sit beside them.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from .._atomic import atomic_write

__all__ = ["CONFIG_FILE", "LOG_FILE", "STATE_FILE", "MAX_SOCKET_PATH_BYTES", "socket_path", "write_config",
           "read_state", "is_detached", "write_state", "remove_state"]

logger = logging.getLogger("stores.redis.embedded")  # the embedded server's one logger

#: The config redis-server is started with.
CONFIG_FILE = "redis.conf"
#: The server's log (appended to by every launch).
LOG_FILE = "redis.log"
#: Pid and URL of the server that serves the folder.
STATE_FILE = "server.json"
#: Longest unix socket path used in place (bytes). Linux allows 107, macOS 103; beyond it the
#: socket goes to a short folder under the system temp dir.
MAX_SOCKET_PATH_BYTES = 103


def socket_path(directory: str) -> tuple[str, str | None]:
    """Where the server's unix socket goes, and the temp folder made for it (None: in ``directory``)."""
    path = os.path.join(directory, "redis.sock")
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH_BYTES:
        return path, None
    folder = tempfile.mkdtemp(prefix="ar-redis-")
    short = os.path.join(folder, "redis.sock")
    logger.debug("Unix socket path %s is longer than %d bytes; the embedded Redis listens on %s instead",
                 path, MAX_SOCKET_PATH_BYTES, short)
    return short, folder


def _quote(value: str) -> str:
    """A path as a double-quoted redis.conf argument."""
    if any(ord(c) < 32 for c in value):
        raise ValueError(f"Path {value!r} holds control characters; redis.conf cannot hold it")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(directory: str, *, sock: str | None, port: int | None, appendonly: bool, appendfsync: str) -> str:
    """Write ``redis.conf`` (options Redis 6.2 and 7.0 both know) and return its path."""
    lines = [
        "# Written by stores.redis.embedded.EmbeddedRedis at each start; edits are overwritten.",
        "daemonize no",
        f"dir {_quote(directory)}",
        f"logfile {_quote(os.path.join(directory, LOG_FILE))}",
        "bind 127.0.0.1",
        "protected-mode yes",
        f"port {port or 0}",
    ]
    if sock is not None:
        lines += [f"unixsocket {_quote(sock)}", "unixsocketperm 700"]
    lines += [
        f"appendonly {'yes' if appendonly else 'no'}",
        f"appendfsync {appendfsync}",
        'save ""',
        # Most ledgers are short (a waiting run holds two or three records); the default
        # 4 KiB stream node is mostly empty for them. 1 KiB nodes cut a two-record ledger
        # from about 4.7 KB to 1.7 KB, for ~20 % more memory per record on long ledgers.
        "stream-node-max-bytes 1024",
    ]
    path = os.path.join(directory, CONFIG_FILE)
    atomic_write(Path(path), ("\n".join(lines) + "\n").encode(), fsync=False)
    return path


def read_state(directory: str) -> tuple[int, str] | None:
    """``(pid, url)`` from ``server.json``; None when there is none or it cannot be read."""
    try:
        with open(os.path.join(directory, STATE_FILE), encoding="utf-8") as f:
            state = json.load(f)
        return int(state["pid"]), str(state["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_detached(directory: str) -> bool:
    """Whether ``server.json`` says the server was left running on purpose."""
    try:
        with open(os.path.join(directory, STATE_FILE), encoding="utf-8") as f:
            return bool(json.load(f).get("detached"))
    except (OSError, ValueError, AttributeError):
        return False


def write_state(directory: str, pid: int, url: str, *, detached: bool = False) -> None:
    """Record in ``server.json`` which server serves the folder."""
    state: dict[str, object] = {"pid": pid, "url": url}
    if detached:
        state["detached"] = True
    atomic_write(Path(directory) / STATE_FILE, json.dumps(state).encode(), fsync=False)


def remove_state(directory: str) -> None:
    """Remove ``server.json`` (no server serves the folder any more)."""
    try:
        os.unlink(os.path.join(directory, STATE_FILE))
    except FileNotFoundError:
        pass
