"""A ReAct agent (LLM, two tools, a human approval) for the AbstractCore tests and workers.

Imported by the test process and, through ``ABSTRACTRUNTIME_IMPORTS``, by workers. When
``AGENT_MODE`` is set (workers only), it also configures the workers' LLM and tool handlers:
``local`` (AbstractCore in the worker, against ``FAKE_OPENAI_URL``), ``remote`` (an
AbstractCore server at ``AC_SERVER_URL``, tools passed through to the host) or ``hybrid``
(that server, tools on the workers). ``die-after-answer:<marker>`` in a run's vars kills the
worker right after the LLM answered, once.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from runtime import Effect, EffectType, StepPlan, WorkflowSpec
from workers.registry import register_workflow, registry, tool

import support.celery_scenarios  # noqa: F401  (the `add` tool)

TOOLS = [
    {"type": "function", "function": {"name": "add", "description": "Add two numbers", "parameters": {
        "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}}},
    {"type": "function", "function": {"name": "shout", "description": "Upper-case a text", "parameters": {
        "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}},
]


@tool
def shout(text: str) -> str:
    return text.upper() + "!"


def _react() -> WorkflowSpec:
    def think(run: Any, ctx: Any) -> StepPlan:
        messages = run.vars.setdefault("messages", [{"role": "user", "content": run.vars["question"]}])
        return StepPlan(node_id="think", effect=Effect(EffectType.LLM_CALL, {"messages": messages, "tools": TOOLS},
                                                       result_key="reply"), next_node="route")

    def route(run: Any, ctx: Any) -> StepPlan:
        marker = run.vars.get("die_in_route")
        if marker and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        reply = run.vars["reply"]
        if not reply.get("tool_calls"):
            return StepPlan(node_id="route", complete_output={"answer": reply["content"]})
        run.vars["messages"].append({"role": "assistant", "content": None, "tool_calls": [
            {"id": c["call_id"], "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}} for c in reply["tool_calls"]]})
        return StepPlan(node_id="route", next_node="approve")

    def approve(run: Any, ctx: Any) -> StepPlan:
        names = ", ".join(c["name"] for c in run.vars["reply"]["tool_calls"])
        return StepPlan(node_id="approve", effect=Effect(EffectType.ASK_USER, {
            "prompt": f"Run {names}?", "choices": ["yes", "no"]}, result_key="approval"), next_node="act")

    def act(run: Any, ctx: Any) -> StepPlan:
        if run.vars["approval"] != "yes":
            return StepPlan(node_id="act", complete_output={"answer": None, "refused": True})
        calls = run.vars["reply"]["tool_calls"]
        return StepPlan(node_id="act", effect=Effect(EffectType.TOOL_CALLS, {"tool_calls": calls},
                                                     result_key="tool_results"), next_node="observe")

    def observe(run: Any, ctx: Any) -> StepPlan:
        for r in run.vars["tool_results"]["results"]:
            run.vars["messages"].append({"role": "tool", "tool_call_id": r["call_id"],
                                         "content": json.dumps(r["output"] if r["success"] else r["error"])})
        return StepPlan(node_id="observe", next_node="think")

    return WorkflowSpec(workflow_id="react", entry_node="think", nodes={
        "think": think, "route": route, "approve": approve, "act": act, "observe": observe})


register_workflow(_react(), replace=True)


def _configure_workers(mode: str) -> None:
    from runtime.integrations.abstractcore import make_llm_call_handler
    from runtime.integrations.abstractcore.llm_client import LocalAbstractCoreLLMClient, RemoteAbstractCoreLLMClient
    from workers.abstractcore import use_llm

    fake = os.environ["FAKE_OPENAI_URL"]
    llm: Any
    if mode == "local":
        llm = LocalAbstractCoreLLMClient(provider="openai-compatible", model="gpt-4o-mini",
                                         llm_kwargs={"base_url": fake, "api_key": "", "timeout": 30})
    else:
        llm = RemoteAbstractCoreLLMClient(server_base_url=os.environ["AC_SERVER_URL"],
                                          model="openai-compatible/gpt-4o-mini", base_url=fake,
                                          api_key=os.environ.get("AC_TOKEN"), timeout_s=30)
    use_llm(llm, tools="passthrough" if mode == "remote" else "registry")
    inner = make_llm_call_handler(llm=llm)

    def llm_then_maybe_die(run: Any, effect: Effect, default_next_node: str | None) -> Any:
        outcome = inner(run, effect, default_next_node)
        marker = run.vars.get("die_after_answer")
        if marker and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)  # answered, not yet committed
        return outcome

    registry.register_effect_handler(EffectType.LLM_CALL, llm_then_maybe_die)


if os.environ.get("AGENT_MODE"):
    _configure_workers(os.environ["AGENT_MODE"])
