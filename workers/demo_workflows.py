"""The workflows of ``abstractruntime demo`` (and of the compose file's default workers).

Import this module in a worker (``ABSTRACTRUNTIME_IMPORTS=workers.demo_workflows``) to
register them: a chain, a branch, a timer, a question, a tool call, and a parent with a
sync and an async child.
"""

from __future__ import annotations

from typing import Any

from runtime import Effect, EffectType, StepPlan, WorkflowSpec

from .registry import register_workflow, tool

__all__ = ["WORKFLOW_IDS"]


@tool(name="demo.add")
def add(a: float, b: float) -> float:
    return a + b


@tool(name="demo.shout")
def shout(text: str) -> str:
    return text.upper() + "!"


def _chain() -> WorkflowSpec:
    def step(i: int, last: bool) -> Any:
        def node(run: Any, ctx: Any) -> StepPlan:
            run.vars["count"] = run.vars.get("count", 0) + 1
            if last:
                return StepPlan(node_id=f"step{i}", complete_output={"count": run.vars["count"]})
            return StepPlan(node_id=f"step{i}", next_node=f"step{i + 1}")
        return node

    return WorkflowSpec(workflow_id="demo.chain", entry_node="step0",
                        nodes={f"step{i}": step(i, i == 4) for i in range(5)})


def _branch() -> WorkflowSpec:
    def classify(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="classify", next_node="review" if run.vars.get("amount", 0) > 100 else "approve")

    def review(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="review", complete_output={"decision": "needs review", "amount": run.vars["amount"]})

    def approve(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="approve", complete_output={"decision": "approved", "amount": run.vars["amount"]})

    return WorkflowSpec(workflow_id="demo.branch", entry_node="classify",
                        nodes={"classify": classify, "review": review, "approve": approve})


def _sleep() -> WorkflowSpec:
    def sleep(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="sleep", effect=Effect(EffectType.WAIT_UNTIL, {"until": run.vars["until"]}),
                        next_node="wake")

    def wake(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="wake", complete_output={"slept_until": run.vars["until"], "woke_at": ctx.now_iso()})

    return WorkflowSpec(workflow_id="demo.sleep", entry_node="sleep", nodes={"sleep": sleep, "wake": wake})


def _ask() -> WorkflowSpec:
    def ask(run: Any, ctx: Any) -> StepPlan:
        question = Effect(EffectType.ASK_USER, {"prompt": "Ship release 1.0?", "choices": ["yes", "no"]},
                          result_key="answer")
        return StepPlan(node_id="ask", effect=question, next_node="done")

    def done(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="done", complete_output={"shipped": run.vars["answer"] == "yes"})

    return WorkflowSpec(workflow_id="demo.ask", entry_node="ask", nodes={"ask": ask, "done": done})


def _tools() -> WorkflowSpec:
    def call(run: Any, ctx: Any) -> StepPlan:
        calls = [{"name": "demo.add", "arguments": {"a": 2, "b": 40}, "call_id": "1"},
                 {"name": "demo.shout", "arguments": {"text": "done"}, "call_id": "2"}]
        return StepPlan(node_id="call", effect=Effect(EffectType.TOOL_CALLS, {"tool_calls": calls},
                                                      result_key="tools"), next_node="report")

    def report(run: Any, ctx: Any) -> StepPlan:
        results = run.vars["tools"]["results"]
        return StepPlan(node_id="report", complete_output={"sum": results[0]["output"], "text": results[1]["output"]})

    return WorkflowSpec(workflow_id="demo.tools", entry_node="call", nodes={"call": call, "report": report})


def _child() -> WorkflowSpec:
    def work(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="work", next_node="finish")

    def finish(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="finish", complete_output={"greeting": f"hello from {run.vars.get('from', '?')}"})

    return WorkflowSpec(workflow_id="demo.child", entry_node="work", nodes={"work": work, "finish": finish})


def _parent(is_async: bool) -> WorkflowSpec:
    name = "demo.parent_async" if is_async else "demo.parent_sync"

    def spawn(run: Any, ctx: Any) -> StepPlan:
        payload: dict[str, Any] = {"workflow_id": "demo.child", "vars": {"from": name}, "async": is_async}
        return StepPlan(node_id="spawn", effect=Effect(EffectType.START_SUBWORKFLOW, payload, result_key="child"),
                        next_node="done")

    def done(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="done", complete_output={"child": run.vars["child"]})

    return WorkflowSpec(workflow_id=name, entry_node="spawn", nodes={"spawn": spawn, "done": done})


_SPECS = [_chain(), _branch(), _sleep(), _ask(), _tools(), _child(), _parent(False), _parent(True)]
for _spec in _SPECS:
    register_workflow(_spec, replace=True)

WORKFLOW_IDS = [s.workflow_id for s in _SPECS]
