"""``connect()``: a checked redis-py client for :class:`~stores.redis.settings.RedisSettings`.

With a URL it connects there; with none it starts (or finds) the embedded redis-server of
``data_dir`` first. Connection errors are retried with exponential backoff, and whatever
fails is raised with the URL's password masked and no exception chained.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .embedded import EmbeddedRedis, shared_embedded
from .errors import RedisUnavailable
from .urls import mask_url, scrub

if TYPE_CHECKING:
    import redis

    from .settings import RedisSettings

__all__ = ["connect"]


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
        failure = f"Invalid Redis URL {mask_url(url)}: {scrub(str(exc), url)}"
    if failure is not None:
        raise ValueError(failure) from None

    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        failure = f"{type(exc).__name__}: {scrub(str(exc), url)}"
        client.close()
    if failure is not None:
        # Raised outside the except block so that neither __cause__ nor __context__ holds the
        # original error, whose text or arguments might show the password.
        raise RedisUnavailable(url=url, reason=failure) from None
    return client
