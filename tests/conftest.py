"""Shared fixtures: a redis-server per session, fakeredis, a one-node Redis Cluster, and
``backend``, parametrised over every store combination of ``support.backends`` (memory and
JSON files, plain and hash-chained; Redis, fakeredis and Cluster), so that every kernel
scenario runs on each. ``make_runtime()`` builds the in-process ``Runtime`` on it; the Celery
driver's scenarios have their own suites (``test_celery_driver.py`` on real workers,
``test_engine_stub.py`` through the stub dispatcher). ``group`` is a worker group (real
``celery`` processes) for one test module and ``client`` a producer of it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runtime import Runtime

from support.backends import BACKENDS, Backend, build_backend


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", default=False,
                     help="chaos and soak runs at full size (minutes), not the bounded CI size")


@pytest.fixture(scope="session")
def redis_server() -> Any:
    """A redis-server this test session starts on a free port (never the machine's own)."""
    from support.redis_server import RedisServer

    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster_server() -> Any:
    """A one-node Redis Cluster (it enforces CROSSSLOT), started for this session."""
    from support.redis_server import OneNodeCluster

    server = OneNodeCluster().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_redis_server() -> Any:
    import fakeredis

    return fakeredis.FakeServer()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    client = None
    if request.param == "redis":
        client = request.getfixturevalue("redis_server").client()
    elif request.param == "fakeredis":
        import fakeredis

        client = fakeredis.FakeRedis(server=request.getfixturevalue("fake_redis_server"))
    elif request.param == "redis-cluster":
        client = request.getfixturevalue("redis_cluster_server").client()
    return build_backend(request.param, tmp_path / "data", client)


@pytest.fixture
def make_runtime(backend: Backend) -> Callable[..., Runtime]:
    """Build a Runtime on the parametrised backend; keyword arguments go to ``Runtime``."""

    def make(**kwargs: Any) -> Runtime:
        return Runtime(run_store=backend.run_store, ledger_store=backend.ledger_store, **kwargs)

    return make


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record backoff sleeps instead of sleeping (the runtime looks ``time.sleep`` up at call time)."""
    slept: list[float] = []
    monkeypatch.setattr("time.sleep", lambda s: slept.append(s))
    return slept


@pytest.fixture(scope="module")
def group(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A worker and beat for one test module, on the session's redis-server (real processes)."""
    from support.celery_workers import WorkerGroup

    g = WorkerGroup(redis_server.url, tmp_path_factory.mktemp("workers"), tick_backoff_s=0.05)
    g.start_worker("w1")
    g.start_beat()
    yield g
    g.close()


@pytest.fixture(scope="module")
def client(group: Any) -> Any:
    """A producer of that module's deployment."""
    return group.client()


@pytest.fixture(params=["redis", "fakeredis"])
def store(request: pytest.FixtureRequest) -> Any:
    """A driver's ``RedisBackend`` under a fresh prefix, on the session's redis-server and on fakeredis."""
    from support.backends import redis_backend

    if request.param == "redis":
        return redis_backend(request.getfixturevalue("redis_server").client())
    import fakeredis

    return redis_backend(fakeredis.FakeRedis(server=request.getfixturevalue("fake_redis_server")))


@pytest.fixture
def fresh(redis_server: Any, tmp_path: Path) -> Any:
    """Makes deployments of this test alone (``fresh(**settings)``: its own prefix and broker
    database, real worker and beat processes started by the test), closed after it."""
    from support.celery_workers import WorkerGroup

    groups: list[Any] = []

    def make(**settings: Any) -> Any:
        g = WorkerGroup(redis_server.url, tmp_path / f"g{len(groups)}", **settings)
        groups.append(g)
        return g

    yield make
    for g in groups:
        g.close()
