"""The store combinations every kernel scenario runs on (``conftest.backend`` parametrises them).

In memory and JSON files, each plain and hash-chained, and Redis (a real redis-server the
session starts, fakeredis, and a one-node Redis Cluster that enforces CROSSSLOT; Redis
ledgers are always chained). ``Backend.reopen()`` gives a fresh view of the same data, as
another process would see it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime import HashChainedLedgerStore, InMemoryLedgerStore, InMemoryRunStore
from stores import JsonFileRunStore, JsonlLedgerStore


def fresh_prefix(tag: str = "t") -> str:
    """A key prefix no other test uses: tests never flush a Redis, they keep to their prefix."""
    return f"{tag}{uuid.uuid4().hex[:12]}"


def redis_backend(client: Any, **kwargs: Any) -> Any:
    """A ``RedisBackend`` on ``client`` (a real server's or fakeredis) under a fresh prefix."""
    from stores.redis import RedisBackend

    return RedisBackend(client, prefix=fresh_prefix(), **kwargs)


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

        prefix = fresh_prefix()

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
