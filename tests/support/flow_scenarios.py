"""A workflow for the flow-control tests on real workers (tests/test_flow_workers.py): one tool
call that records when it starts and ends, in a file every worker process appends to."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from runtime import Effect, EffectType, StepPlan, WorkflowSpec, current_execution
from workers.registry import register_workflow, tool


@tool
def probe(path: str, tenant: str, seconds: float = 0.1) -> str:
    """Append ``{"tenant", "start", "end", "pid", "run_id"}`` to ``path`` (wall clock, one machine)."""
    start = time.time()
    time.sleep(seconds)
    ex = current_execution()
    line = {"tenant": tenant, "start": start, "end": time.time(), "pid": os.getpid(),
            "run_id": ex.run_id if ex is not None else None}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")
    return tenant


def _probed() -> WorkflowSpec:
    def call(run: Any, ctx: Any) -> StepPlan:
        v = run.vars
        calls = [{"name": "probe", "arguments": {"path": v["probe"], "tenant": v["tenant"],
                                                  "seconds": v.get("seconds", 0.1)}}]
        return StepPlan(node_id="call", effect=Effect(type=EffectType.TOOL_CALLS, payload={"tool_calls": calls},
                                                      result_key="probe"), next_node="done")

    def done(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="done", complete_output={"tenant": run.vars["tenant"]})

    return WorkflowSpec(workflow_id="probed", entry_node="call", nodes={"call": call, "done": done})


register_workflow(_probed(), replace=True)


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end and a start at the same instant do not overlap)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    most = now = 0
    for _t, step in events:
        now += step
        most = max(most, now)
    return most


# -- tests/test_flow_acceptance.py ----------------------------------------------------------------

_redis_clients: dict[str, Any] = {}


def admitted_at(redis_url: str, holders_key: str, lease_ms: int) -> float | None:
    """When the current effect attempt's flow-control share was taken, by the Redis clock (epoch s):
    its lease expiry in ``holders_key`` less ``lease_ms`` (right after the admission, before the
    first renewal, a third of a lease later); None without a share."""
    import redis

    client = _redis_clients.get(redis_url)
    if client is None:
        client = _redis_clients[redis_url] = redis.Redis.from_url(redis_url)
    ex = current_execution()
    if ex is None:
        return None
    expiry = client.zscore(holders_key, f"{ex.run_id}/{ex.idempotency_key}/{ex.attempt}")
    return None if expiry is None else (expiry - lease_ms) / 1000


@tool
def stamp(path: str, tenant: str, redis_url: str, holders_key: str, lease_ms: int) -> str:
    """Append ``{"tenant", "start", "admitted", "run_id"}`` to ``path``: ``start`` the wall clock when
    the tool starts, ``admitted`` when its share was taken (:func:`admitted_at`)."""
    start = time.time()
    admitted = admitted_at(redis_url, holders_key, lease_ms)
    ex = current_execution()
    line = {"tenant": tenant, "start": start, "admitted": admitted, "run_id": ex.run_id if ex is not None else None}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")
    return tenant


def _stamped() -> WorkflowSpec:
    def call(run: Any, ctx: Any) -> StepPlan:
        args = {k: run.vars[k] for k in ("path", "tenant", "redis_url", "holders_key", "lease_ms")}
        return StepPlan(node_id="call", effect=Effect(type=EffectType.TOOL_CALLS, payload={
            "tool_calls": [{"name": "stamp", "arguments": args}]}, result_key="stamp"), next_node="done")

    def done(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="done", complete_output={"tenant": run.vars["tenant"]})

    return WorkflowSpec(workflow_id="stamped", entry_node="call", nodes={"call": call, "done": done})


def _asks() -> WorkflowSpec:
    """One LLM call with ``vars["prompt"]`` (the fake LLM counts its words as prompt tokens)."""
    def ask(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="ask", effect=Effect(type=EffectType.LLM_CALL, payload={"prompt": run.vars["prompt"]},
                                                     result_key="reply"), next_node="done")

    def done(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="done", complete_output={"usage": run.vars["reply"].get("usage")})

    return WorkflowSpec(workflow_id="asks", entry_node="ask", nodes={"ask": ask, "done": done})


def _begins() -> WorkflowSpec:
    """A run whose first node appends ``{"tenant", "t", "run_id"}`` to ``vars["path"]`` (wall clock)
    and ends: when its start was let through."""
    def begin(run: Any, ctx: Any) -> StepPlan:
        with open(run.vars["path"], "a") as f:
            f.write(json.dumps({"tenant": run.vars["tenant"], "t": time.time(), "run_id": run.run_id}) + "\n")
        return StepPlan(node_id="begin", complete_output={"tenant": run.vars["tenant"]})

    return WorkflowSpec(workflow_id="begins", entry_node="begin", nodes={"begin": begin})


register_workflow(_stamped(), replace=True)
register_workflow(_asks(), replace=True)
register_workflow(_begins(), replace=True)


def windows_over(times: list[float], width: float) -> int:
    """The most of ``times`` in one half-open window ``[t, t + width)``, trying every ``t`` in ``times``."""
    times = sorted(times)
    most, j = 0, 0
    for i, t in enumerate(times):
        j = max(j, i)
        while j < len(times) and times[j] < t + width:
            j += 1
        most = max(most, j - i)
    return most


def _use_fake_openai(url: str) -> None:
    """LLM calls through AbstractCore's handler against the fake at ``url``; a run whose vars name a
    ``path`` gets ``{"run_id", "admitted", "usage"}`` appended to it per call (:func:`admitted_at`)."""
    from runtime.integrations.abstractcore import make_llm_call_handler
    from runtime.integrations.abstractcore.llm_client import LocalAbstractCoreLLMClient
    from workers.abstractcore import use_llm
    from workers.registry import registry

    llm = LocalAbstractCoreLLMClient(provider="openai-compatible", model="gpt-4o-mini",
                                     llm_kwargs={"base_url": url, "api_key": "", "timeout": 30})
    use_llm(llm)
    inner = make_llm_call_handler(llm=llm)

    def recorded(run: Any, effect: Effect, default_next_node: str | None) -> Any:
        v = run.vars
        admitted = admitted_at(v["redis_url"], v["holders_key"], v["lease_ms"]) if v.get("path") else None
        outcome = inner(run, effect, default_next_node)
        if v.get("path"):
            result = outcome.result if isinstance(outcome.result, dict) else {}
            with open(v["path"], "a") as f:
                f.write(json.dumps({"run_id": run.run_id, "admitted": admitted, "usage": result.get("usage")}) + "\n")
        return outcome

    registry.register_effect_handler(EffectType.LLM_CALL, recorded)


if os.environ.get("FLOW_FAKE_OPENAI_URL"):  # workers of the token-budget test
    _use_fake_openai(os.environ["FLOW_FAKE_OPENAI_URL"])
