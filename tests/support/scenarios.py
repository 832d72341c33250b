"""Small workflows the scenario tests share. Node handlers are plain functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runtime import Effect, EffectType, StepPlan, WorkflowSpec


def chain(n: int, workflow_id: str = "chain") -> WorkflowSpec:
    """n pure transitions, then completion with the number of nodes visited."""

    def make(i: int) -> Callable[..., StepPlan]:
        def node(run: Any, ctx: Any) -> StepPlan:
            run.vars["visited"] = run.vars.get("visited", 0) + 1
            if i == n - 1:
                return StepPlan(node_id=f"n{i}", complete_output={"visited": run.vars["visited"]})
            return StepPlan(node_id=f"n{i}", next_node=f"n{i + 1}")

        return node

    return WorkflowSpec(workflow_id=workflow_id, entry_node="n0", nodes={f"n{i}": make(i) for i in range(n)})


def one_effect(effect: Effect, *, workflow_id: str = "one_effect", next_node: str | None = "done") -> WorkflowSpec:
    """Node ``act`` requests ``effect`` and goes to ``done``, which completes with the vars it sees."""

    def act(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="act", effect=effect, next_node=next_node)

    def done(run: Any, ctx: Any) -> StepPlan:
        public = {k: v for k, v in run.vars.items() if not k.startswith("_")}
        return StepPlan(node_id="done", complete_output=public)

    return WorkflowSpec(workflow_id=workflow_id, entry_node="act", nodes={"act": act, "done": done})


def ask(prompt: str = "Continue?", *, result_key: str = "answer", workflow_id: str = "ask", **payload: Any
        ) -> WorkflowSpec:
    return one_effect(
        Effect(type=EffectType.ASK_USER, payload={"prompt": prompt, **payload}, result_key=result_key),
        workflow_id=workflow_id,
    )


def tool_loop(turns: int, payload: dict[str, Any], workflow_id: str = "loop") -> WorkflowSpec:
    """Node ``call`` issues the same TOOL_CALLS effect ``turns`` times (an agent loop)."""

    def call(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(
            node_id="call", effect=Effect(type=EffectType.TOOL_CALLS, payload=payload, result_key="last"),
            next_node="check",
        )

    def check(run: Any, ctx: Any) -> StepPlan:
        seen = run.vars.setdefault("seen", [])
        seen.append(run.vars["last"])
        if len(seen) < turns:
            return StepPlan(node_id="check", next_node="call")
        return StepPlan(node_id="check", complete_output={"seen": seen})

    return WorkflowSpec(workflow_id=workflow_id, entry_node="call", nodes={"call": call, "check": check})
