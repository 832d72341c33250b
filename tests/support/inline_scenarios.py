"""Workflows for the inline-effect tests on real workers (``tests/test_inline_workers.py``);
imported by their worker processes through ``ABSTRACTRUNTIME_IMPORTS=support.inline_scenarios``."""

from __future__ import annotations

import os
import time
from typing import Any

from runtime import Effect, EffectType, StepPlan, WorkflowSpec
from workers.registry import registry, tool


@tool(inline=True)
def quick(i: int = 0) -> int:
    return i


@tool(name="quick_queued")
def quick_queued(i: int = 0) -> int:
    """``quick`` not marked inline: its calls always go through the tools queue."""
    return i


@tool(inline=True)
def stall_once(path: str) -> str:
    """The first call writes ``path``, then blocks (the test kills its worker then); later calls answer."""
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(60)
    return "done"


def calls(n_var: str, tool_name: str) -> WorkflowSpec:
    """``vars[n_var]`` tool calls of ``tool_name``, one per turn, then the list of results."""
    def call(run: Any, ctx: Any) -> StepPlan:
        args = {"i": len(run.vars.get("seen", []))} if tool_name.startswith("quick") else {"path": run.vars["path"]}
        return StepPlan(node_id="call", effect=Effect(type=EffectType.TOOL_CALLS, payload={
            "tool_calls": [{"name": tool_name, "arguments": args, "call_id": "c"}]}, result_key="last"),
            next_node="check")

    def check(run: Any, ctx: Any) -> StepPlan:
        seen = run.vars.setdefault("seen", [])
        seen.append(run.vars["last"]["results"][0]["output"])
        if len(seen) < int(run.vars.get(n_var, 1)):
            return StepPlan(node_id="check", next_node="call")
        return StepPlan(node_id="check", complete_output={"count": len(seen)})

    return WorkflowSpec(workflow_id=f"{tool_name}_calls", entry_node="call", nodes={"call": call, "check": check})


for _spec in (calls("n", "quick"), calls("n", "quick_queued"), calls("n", "stall_once")):
    registry.register_workflow(_spec, replace=True)
