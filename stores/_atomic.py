"""Crash-safe file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import os
import tempfile
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def atomic_write(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to a temp file beside ``path``, then rename it over ``path``."""
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
