"""Workflows for the console tests (``tests/test_console*.py``); imported by their worker
processes through ``ABSTRACTRUNTIME_IMPORTS=support.console_scenarios`` and by the tests."""

from __future__ import annotations

import os
import time
from typing import Any

from runtime import Effect, EffectOutcome, EffectType, StepPlan, WorkflowSpec
from workers.registry import register_effect_handler, registry, tool

AMOUNT_SCHEMA = {"type": "object", "properties": {"amount": {"type": "integer", "minimum": 1}},
                 "required": ["amount"]}


@tool
def pause(s: float = 0.3) -> str:
    time.sleep(s)
    return f"slept {s}"


def approve() -> WorkflowSpec:
    """Asks for an amount (a typed answer), then completes with it."""
    def ask(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="ask", effect=Effect(type=EffectType.ASK_USER, payload={
            "prompt": "How much?", "schema": AMOUNT_SCHEMA}, result_key="answer"), next_node="done")

    def done(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="done", complete_output={"amount": run.vars["answer"]["amount"]})

    return WorkflowSpec(workflow_id="approve", entry_node="ask", nodes={"ask": ask, "done": done})


def paced(steps: int = 6) -> WorkflowSpec:
    """``steps`` tool calls of 0.4 s each, one per node: a ledger that grows while you watch."""
    def node(i: int) -> Any:
        def run(r: Any, ctx: Any) -> StepPlan:
            if i == steps:
                return StepPlan(node_id=f"s{i}", complete_output={"steps": steps})
            call = {"name": "pause", "arguments": {"s": 0.4}, "call_id": f"c{i}"}
            return StepPlan(node_id=f"s{i}", effect=Effect(type=EffectType.TOOL_CALLS, payload={"tool_calls": [call]},
                                                           result_key=f"r{i}"), next_node=f"s{i + 1}")
        return run

    return WorkflowSpec(workflow_id="paced", entry_node="s0", nodes={f"s{i}": node(i) for i in range(steps + 1)})


def flaky() -> WorkflowSpec:
    """Fails at ``check`` until the file ``vars.fix_file`` exists (worker processes), or the
    module-level switch below is on (the test's own process)."""
    def check(run: Any, ctx: Any) -> StepPlan:
        fix_file = run.vars.get("fix_file")
        if not FIXED["on"] and not (fix_file and os.path.exists(fix_file)):
            raise RuntimeError("the upstream answered 500")
        return StepPlan(node_id="check", complete_output={"ok": True})

    return WorkflowSpec(workflow_id="flaky", entry_node="check", nodes={"check": check})


FIXED = {"on": False}


def waiter() -> WorkflowSpec:
    """Waits for the event ``go:<run id>``, holding whatever vars it was given."""
    def hold(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="hold", effect=Effect(type=EffectType.WAIT_EVENT,
                                                      payload={"wait_key": f"go:{run.run_id}"}, result_key="go"),
                        next_node="done")

    def done(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="done", complete_output={})

    return WorkflowSpec(workflow_id="waiter", entry_node="hold", nodes={"hold": hold, "done": done})


def talker() -> WorkflowSpec:
    """One LLM call (on the llm queue), answered by the fake handler below."""
    def think(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="think", effect=Effect(type=EffectType.LLM_CALL, payload={"prompt": "hello"},
                                                       result_key="reply"), next_node="done")

    def done(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="done", complete_output={"reply": run.vars["reply"]})

    return WorkflowSpec(workflow_id="talker", entry_node="think", nodes={"think": think, "done": done})


def fake_llm(run: Any, effect: Effect) -> EffectOutcome:
    return EffectOutcome.completed({"content": str(effect.payload.get("prompt", ""))[::-1], "model": "fake-1"})


if "support.console_scenarios" in os.environ.get("ABSTRACTRUNTIME_IMPORTS", ""):
    # in the workers of these tests only: the test process keeps the handlers other tests set
    register_effect_handler(EffectType.LLM_CALL, fake_llm)


def sleeper() -> WorkflowSpec:
    """Sleeps until ``vars.until`` (a wake-now candidate)."""
    def nap(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="nap", effect=Effect(type=EffectType.WAIT_UNTIL, payload={"until": run.vars["until"]}),
                        next_node="done")

    def done(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="done", complete_output={"woke": True})

    return WorkflowSpec(workflow_id="sleeper", entry_node="nap", nodes={"nap": nap, "done": done})


def register(reg: Any) -> None:
    for spec in (approve(), paced(), flaky(), waiter(), talker(), sleeper()):
        reg.register_workflow(spec, replace=True)


register(registry)
