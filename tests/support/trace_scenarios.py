"""Workflows for the tracing test (``tests/test_tracing.py``); imported by its worker processes
(``ABSTRACTRUNTIME_IMPORTS``), it registers them and an LLM handler that calls the loopback fake
OpenAI server at ``TRACE_TEST_LLM_URL`` with our remote client (so its request carries the
effect span's ``traceparent``).

``traced``: n1 -> n2 -> n3 (effect-free), ``llm`` (an LLM call), ``child`` (the sync child
``traced_child``), ``hold`` (waits for the event ``trace:<run id>``), ``done``.
"""

from __future__ import annotations

import os
from typing import Any

from runtime import Effect, EffectOutcome, EffectType, StepPlan, WorkflowSpec
from runtime.integrations.abstractcore.llm_client import RemoteAbstractCoreLLMClient
from workers.registry import register_effect_handler, register_workflow


def llm(run: Any, effect: Effect) -> EffectOutcome:
    client = RemoteAbstractCoreLLMClient(server_base_url=os.environ["TRACE_TEST_LLM_URL"].removesuffix("/v1"),
                                         model="fake")
    return EffectOutcome.completed(client.generate(prompt=str(effect.payload.get("prompt", ""))))


def _go(node: str, nxt: str) -> Any:
    return lambda run, ctx: StepPlan(node_id=node, next_node=nxt)


def traced() -> WorkflowSpec:
    def ask_llm(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="llm", effect=Effect(EffectType.LLM_CALL, {"prompt": "hello there"},
                                                     result_key="reply"), next_node="child")

    def child(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="child", effect=Effect(EffectType.START_SUBWORKFLOW, {"workflow_id": "traced_child"},
                                                       result_key="kid"), next_node="hold")

    def hold(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="hold", effect=Effect(EffectType.WAIT_EVENT, {"wait_key": f"trace:{run.run_id}"}),
                        next_node="done")

    def done(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="done", complete_output={"ok": True})

    return WorkflowSpec(workflow_id="traced", entry_node="n1", nodes={
        "n1": _go("n1", "n2"), "n2": _go("n2", "n3"), "n3": _go("n3", "llm"), "llm": ask_llm, "child": child,
        "hold": hold, "done": done})


def traced_child() -> WorkflowSpec:
    return WorkflowSpec(workflow_id="traced_child", entry_node="c1", nodes={
        "c1": _go("c1", "c2"), "c2": lambda run, ctx: StepPlan(node_id="c2", complete_output={"child": True})})


register_effect_handler(EffectType.LLM_CALL, llm)
register_workflow(traced(), replace=True)
register_workflow(traced_child(), replace=True)
