"""The stub-dispatcher engine the flow-control stories share (``tests/test_flow_gate.py``,
``tests/test_fair_dispatch.py``): rules read at every admission, and a heartbeat of a worker
consuming every queue (the stub is it), so that ``explain`` looks past NO_CONSUMER."""

from __future__ import annotations

from typing import Any

from workers.registry import Registry, registry
from workers.settings import WorkerSettings
from workers.testing import StubDispatcher, make_stub_engine

import support.celery_scenarios  # noqa: F401  (registers the workflows)


def engine_of(store: Any, reg: Registry | None = None, **settings: Any) -> tuple[Any, StubDispatcher]:
    """``reg``: the workflows (default: the process-wide registry)."""
    base = {"flow_rules_cache_s": 0, "effect_lease_s": 30}
    engine, stub = make_stub_engine(store, reg or registry, WorkerSettings(**{**base, **settings}))
    store.write_heartbeat("stub-worker", {"kind": "worker", "hostname": "stub", "pid": 1,
                                          "queues": list(engine.settings.queues)}, ttl_ms=600_000)
    return engine, stub
