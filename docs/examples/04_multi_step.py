"""Branching: the run's vars decide which node comes next.

An expense is approved at once when small, and sent to a reviewer (an ASK_USER wait)
when large; the reviewer's answer picks the last node. Three expenses take three paths.

Run it from the repository root:  python docs/examples/04_multi_step.py
"""

import sys
from pathlib import Path

try:
    import runtime  # noqa: F401
except ImportError:  # not installed: use the checkout this file lives in
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from runtime import Effect, EffectType, RunStatus, StepPlan, WorkflowSpec, create_scheduled_runtime  # noqa: E402

#: Expenses up to this amount need no reviewer.
AUTO_LIMIT = 100


def visit(run, node_id):
    # Moving between nodes writes no ledger record, so keep the path in vars to show it.
    run.vars.setdefault("path", []).append(node_id)


def classify(run, ctx):
    visit(run, "classify")
    small = run.vars["amount"] <= AUTO_LIMIT
    return StepPlan(node_id="classify", next_node="approve" if small else "review")


def review(run, ctx):
    visit(run, "review")
    question = Effect(
        EffectType.ASK_USER,
        {"prompt": f"Approve an expense of {run.vars['amount']}?", "choices": ["yes", "no"]},
        result_key="reviewer.answer",  # dots make nested dicts: vars["reviewer"]["answer"]
    )
    return StepPlan(node_id="review", effect=question, next_node="decide")


def decide(run, ctx):
    visit(run, "decide")
    return StepPlan(node_id="decide", next_node="approve" if run.vars["reviewer"]["answer"] == "yes" else "reject")


def approve(run, ctx):
    visit(run, "approve")
    return StepPlan(node_id="approve", complete_output={"decision": "approved", "path": run.vars["path"]})


def reject(run, ctx):
    visit(run, "reject")
    return StepPlan(node_id="reject", complete_output={"decision": "rejected", "path": run.vars["path"]})


workflow = WorkflowSpec(
    workflow_id="expense",
    entry_node="classify",
    nodes={"classify": classify, "review": review, "decide": decide, "approve": approve, "reject": reject},
)

with create_scheduled_runtime(workflows=[workflow]) as rt:
    # (amount, what the reviewer would answer if asked)
    for amount, answer in [(40, None), (500, "yes"), (2000, "no")]:
        run_id, state = rt.run(workflow, vars={"amount": amount})
        if state.status == RunStatus.WAITING:
            print(f"expense {amount}: waiting for a reviewer: {state.waiting.prompt}")
            state = rt.respond(run_id, answer)
        path = " -> ".join(state.output["path"])
        print(f"expense {amount}: {state.status.value}, {state.output['decision']} ({path})")
