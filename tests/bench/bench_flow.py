"""The workflow and the tool ``flow.py``'s workers import (not a script).

``flow_tools`` makes ``vars["calls"]`` tool calls one after the other, each a TOOL_CALLS effect
of one call to ``flow_stamp``. ``flow_stamp`` pushes, to the Redis list
``bench:flow:lat:<label>``, the seconds from the start of the effect task that runs it (Celery's
``task_prerun`` signal, in the same worker process) to its own start: the dispatch latency flow
control adds to (its admission runs in between), measured inside the worker; and, to
``bench:flow:e2e:<label>``, the seconds from the ``started_at`` of the step's ``started`` record
(stamped by the tick that requested the call, before its commit, its admission and the send)
to the tool's start: the whole way from request to execution, broker included (wall clock,
one machine).
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any

import redis
from celery.signals import task_prerun

from runtime import Effect, EffectType, StepPlan, WorkflowSpec
from runtime.execution import current_execution
from stores.redis.codec import decode_record
from stores.redis.keys import Keys
from workers.registry import register_workflow, tool

_client: Any = None
#: perf_counter at the start of the effect task this process runs now (solo pool: one at a time).
_task_start: list[float] = [0.0]


def _redis() -> Any:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["ABSTRACTRUNTIME_REDIS_URL"])
    return _client


@task_prerun.connect
def _effect_started(sender: Any = None, task: Any = None, **_: Any) -> None:
    name = getattr(task, "name", "") or ""
    if name.startswith("abstractruntime.effect"):
        _task_start[0] = time.perf_counter()


@tool
def flow_stamp(label: str) -> int:
    now, since_task = time.time(), time.perf_counter() - _task_start[0]
    r = _redis()
    r.rpush(f"bench:flow:lat:{label}", repr(since_task))
    ex = current_execution()
    if ex is not None:
        [(entry_id, fields)] = r.xrevrange(Keys(os.environ.get("ABSTRACTRUNTIME_REDIS_PREFIX", "ar")).ledger(ex.run_id),
                                           count=1)
        record = decode_record(fields, key="ledger", entry_id=entry_id, run_id=ex.run_id, limit=1 << 30)
        if record.get("status") == "started":
            r.rpush(f"bench:flow:e2e:{label}", repr(now - datetime.fromisoformat(record["started_at"]).timestamp()))
    return 1


def _flow_tools() -> WorkflowSpec:
    def call(run: Any, ctx: Any) -> StepPlan:
        payload = {"tool_calls": [{"name": "flow_stamp", "arguments": {"label": run.vars["label"]}, "call_id": "s"}]}
        return StepPlan(node_id="call", effect=Effect(type=EffectType.TOOL_CALLS, payload=payload, result_key="last"),
                        next_node="check")

    def check(run: Any, ctx: Any) -> StepPlan:
        run.vars["done"] = run.vars.get("done", 0) + 1
        if run.vars["done"] >= run.vars["calls"]:
            return StepPlan(node_id="check", complete_output={"done": run.vars["done"]})
        return StepPlan(node_id="check", next_node="call")

    return WorkflowSpec(workflow_id="flow_tools", entry_node="call", nodes={"call": call, "check": check})


register_workflow(_flow_tools(), replace=True)
