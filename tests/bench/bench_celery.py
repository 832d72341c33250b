"""Workflows and a bare Celery task for ``celery_ticks.py``, imported by the benchmark's workers.

``bench.hop`` is the floor of the design: a Celery task that sends itself again, N times,
with nothing else. ``stamp_chain_N`` is a chain of N effect-free nodes, like ``chain2000`` of
the test scenarios. The ``stamped`` variants (``stamp_chain_N``, ``bench.hop`` with
``stamps=True``) push ``time.time()`` at each hop to a Redis list (the same cost on both
sides), from which hop latencies are computed; ``plain_chain_N`` and ``stamps=False`` do not,
for throughput.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import shared_task

from runtime import StepPlan, WorkflowSpec
from workers.registry import register_workflow

_client: Any = None


def _redis() -> Any:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["ABSTRACTRUNTIME_REDIS_URL"])
    return _client


def stamp(key: str) -> None:
    _redis().rpush(key, repr(time.time()))


@shared_task(bind=True, name="bench.hop", ignore_result=True)
def hop(self: Any, key: str, i: int, n: int, stamps: bool) -> None:
    if stamps:
        stamp(f"bench:stamps:{key}")
    if i + 1 >= n:
        _redis().set(f"bench:done:{key}", repr(time.time()))
        return
    self.app.send_task("bench.hop", args=[key, i + 1, n, stamps], queue=os.environ.get("BENCH_QUEUE", "ticks"))


def stamp_chain(n: int, stamps: bool) -> WorkflowSpec:
    def make(i: int) -> Any:
        def node(run: Any, ctx: Any) -> StepPlan:
            if stamps:
                stamp(f"bench:stamps:{run.run_id}")
            if i == n - 1:
                return StepPlan(node_id=f"n{i}", complete_output={"n": n})
            return StepPlan(node_id=f"n{i}", next_node=f"n{i + 1}")

        return node

    name = f"{'stamp' if stamps else 'plain'}_chain_{n}"
    return WorkflowSpec(workflow_id=name, entry_node="n0", nodes={f"n{i}": make(i) for i in range(n)})


for _n in (20, 2000):
    for _stamps in (False, True):
        register_workflow(stamp_chain(_n, _stamps), replace=True)
