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
