"""Shared fixtures: every scenario runs on every store backend.

``backend`` is parametrised over the store combinations the kernel supports today: in
memory and JSON files, each plain and hash-chained, and Redis (a real redis-server this
session starts, fakeredis, and a one-node Redis Cluster that enforces CROSSSLOT; Redis
ledgers are always chained). The Celery driver
joins as one more parameter: a scenario only needs ``make_runtime()`` to
give it an object with the ``Runtime`` API (start / tick / resume / cancel_run /
get_state / get_ledger) and ``backend.reopen()`` to give it a fresh view of the same
data, as another process would see it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runtime import HashChainedLedgerStore, InMemoryLedgerStore, InMemoryRunStore, Runtime
from stores import JsonFileRunStore, JsonlLedgerStore


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", default=False,
                     help="chaos and soak runs at full size (minutes), not the bounded CI size")


BACKENDS = ["memory", "memory+chain", "jsonfile", "jsonfile+chain", "redis", "fakeredis", "redis-cluster"]


@dataclass
class Backend:
    name: str
    run_store: Any
    ledger_store: Any
    reopen: Callable[[], Backend]

    @property
    def chained(self) -> bool:
        return self.name.endswith("+chain") or self.name.startswith(("redis", "fakeredis"))


def build_backend(name: str, data_dir: Path, redis_client: Any = None) -> Backend:
    chained = name.endswith("+chain")
    kind = name.split("+")[0]
    if kind in ("redis", "fakeredis", "redis-cluster"):
        # Redis ledgers are always hash-chained. Each test gets its own key prefix, so no
        # test ever flushes or sees another's keys.
        from stores.redis import RedisBackend

        prefix = f"t{uuid.uuid4().hex[:12]}"

        def reopen_redis() -> Backend:
            # A fresh cache: another process.
            backend = RedisBackend(redis_client, prefix=prefix, cluster=kind == "redis-cluster")
            return Backend(name, backend.runs, backend.ledger, reopen_redis)

        return reopen_redis()
    if kind == "memory":
        runs, ledger = InMemoryRunStore(), InMemoryLedgerStore()

        def reopen_memory() -> Backend:
            # Memory cannot outlive a process; a fresh chain wrapper over the same data is
            # the closest to "another process" it gets (it must re-read its chain head).
            return Backend(name, runs, HashChainedLedgerStore(ledger) if chained else ledger, reopen_memory)

        return reopen_memory()
    if kind == "jsonfile":

        def reopen_files() -> Backend:
            runs = JsonFileRunStore(data_dir)
            ledger: Any = JsonlLedgerStore(data_dir)
            return Backend(name, runs, HashChainedLedgerStore(ledger) if chained else ledger, reopen_files)

        return reopen_files()
    raise ValueError(f"unknown backend {name}")


@pytest.fixture(scope="session")
def redis_server() -> Any:
    """A redis-server this test session starts on a free port (never the machine's own)."""
    from redis_server import RedisServer

    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster_server() -> Any:
    """A one-node Redis Cluster (it enforces CROSSSLOT), started for this session."""
    from redis_server import OneNodeCluster

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
    from celery_workers import WorkerGroup

    g = WorkerGroup(redis_server.url, tmp_path_factory.mktemp("workers"), tick_backoff_s=0.05)
    g.start_worker("w1")
    g.start_beat()
    yield g
    g.close()


@pytest.fixture(scope="module")
def client(group: Any) -> Any:
    """A producer of that module's deployment."""
    return group.client()
