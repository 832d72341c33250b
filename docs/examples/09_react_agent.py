"""A ReAct agent: the LLM picks tools, a person approves them, the tools run, the LLM answers.

Every LLM call, every approval and every tool run is an effect in the ledger: a crash at any
point resumes from the last recorded step without calling the LLM or a tool again. Endpoint
as in 08_llm_call.py: ``ABSTRACTRUNTIME_LLM_BASE_URL`` (+ ``_MODEL``, ``_API_KEY``), else the
offline fake server of the tests. The approval is answered by this script ("yes").

Run it from the repository root:  python docs/examples/09_react_agent.py
"""

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
try:
    import runtime  # noqa: F401
except ImportError:  # not installed: use the checkout this file lives in
    sys.path.insert(0, str(REPO))

from runtime import (  # noqa: E402
    Effect,
    EffectType,
    InMemoryLedgerStore,
    InMemoryRunStore,
    RunStatus,
    Runtime,
    StepPlan,
    WorkflowSpec,
)
from runtime.integrations.abstractcore import (  # noqa: E402
    MappingToolExecutor,
    RemoteAbstractCoreLLMClient,
    build_effect_handlers,
    tool_schema,
)


def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper() + "!"


TOOLS = [add, shout]
TOOLS_SCHEMAS = [tool_schema(t) for t in TOOLS]  # what the LLM is offered (JSON, kept in the effect)


def think(run, ctx):
    messages = run.vars.setdefault("messages", [{"role": "user", "content": run.vars["question"]}])
    return StepPlan(node_id="think", next_node="route",
                    effect=Effect(EffectType.LLM_CALL, {"messages": messages, "tools": TOOLS_SCHEMAS},
                                  result_key="reply"))


def route(run, ctx):
    reply = run.vars["reply"]
    if not reply["tool_calls"]:
        return StepPlan(node_id="route", complete_output={"answer": reply["content"]})
    calls = [{"id": c["call_id"], "type": "function",
              "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}} for c in reply["tool_calls"]]
    run.vars["messages"].append({"role": "assistant", "content": None, "tool_calls": calls})
    return StepPlan(node_id="route", next_node="approve")


def approve(run, ctx):
    calls = ", ".join(f"{c['name']}({c['arguments']})" for c in run.vars["reply"]["tool_calls"])
    return StepPlan(node_id="approve", next_node="act", effect=Effect(
        EffectType.ASK_USER, {"prompt": f"Run {calls}?", "choices": ["yes", "no"]}, result_key="approval"))


def act(run, ctx):
    if run.vars["approval"] != "yes":
        return StepPlan(node_id="act", complete_output={"answer": "the tools were not approved"})
    return StepPlan(node_id="act", next_node="observe", effect=Effect(
        EffectType.TOOL_CALLS, {"tool_calls": run.vars["reply"]["tool_calls"]}, result_key="results"))


def observe(run, ctx):
    for r in run.vars["results"]["results"]:
        run.vars["messages"].append({"role": "tool", "tool_call_id": r["call_id"],
                                     "content": json.dumps(r["output"] if r["success"] else r["error"])})
    return StepPlan(node_id="observe", next_node="think")


workflow = WorkflowSpec(workflow_id="react", entry_node="think",
                        nodes={"think": think, "route": route, "approve": approve, "act": act, "observe": observe})


def main(base_url: str, model: str, api_key: str | None) -> None:
    llm = RemoteAbstractCoreLLMClient(server_base_url=base_url, model=model, api_key=api_key, timeout_s=120)
    rt = Runtime(run_store=InMemoryRunStore(), ledger_store=InMemoryLedgerStore(),
                 effect_handlers=build_effect_handlers(llm=llm, tools=MappingToolExecutor.from_tools(TOOLS)))
    run_id = rt.start(workflow=workflow, vars={"question": "What is 2 + 3? Also shout 'done'."})
    state = rt.tick(workflow=workflow, run_id=run_id)
    while state.status == RunStatus.WAITING:
        print(f"the agent asks: {state.waiting.prompt} -> yes")
        state = rt.resume(workflow=workflow, run_id=run_id, wait_key=state.waiting.wait_key, payload="yes")
    print("ledger:", ", ".join(f"{r['node_id']}/{r['status']}" for r in rt.get_ledger(run_id)))
    print(f"answer: {state.output['answer'] if state.output else state.error}")
    print(f"status: {state.status.value}")


if __name__ == "__main__":
    url = os.environ.get("ABSTRACTRUNTIME_LLM_BASE_URL")
    if url:
        main(url, os.environ.get("ABSTRACTRUNTIME_LLM_MODEL", "gpt-4o-mini"),
             os.environ.get("ABSTRACTRUNTIME_LLM_API_KEY"))
    else:
        sys.path.insert(0, str(REPO / "tests"))
        from support.fake_openai import FakeOpenAI

        with FakeOpenAI() as fake:
            print(f"no ABSTRACTRUNTIME_LLM_BASE_URL: using the offline fake at {fake.base_url}")
            main(fake.base_url, "gpt-4o-mini", None)
