"""Crash-safe file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_temp(path: Path, data: bytes, fsync: bool) -> str:
    # One temp name per process and thread: no two writers share it, and it is far
    # cheaper than mkstemp's random names. A leftover from a crash is overwritten later.
    tmp = f"{path.parent}/.{path.name}.{os.getpid()}-{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def atomic_write(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to a temp file beside ``path``, then rename it over ``path``.

    A crashed process leaves the old file or the new one. ``fsync`` also flushes the file
    and the folder to disk before returning, so that a power loss cannot undo the write.
    """
    tmp = _write_temp(path, data, fsync)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    if fsync:
        _fsync_dir(path.parent)


def atomic_create(path: Path, data: bytes, *, fsync: bool = True) -> bool:
    """Like :func:`atomic_write`, but only if ``path`` does not exist; False if it does.

    ``os.link`` fails when the target exists, which makes the check and the creation
    one atomic step, even against another process.
    """
    tmp = _write_temp(path, data, fsync)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    if fsync:
        _fsync_dir(path.parent)
    return True
