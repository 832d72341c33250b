"""Hello world: a workflow of two nodes, run to the end with the plain ``Runtime``.

Run it from the repository root:  python docs/examples/01_hello_world.py
"""

import sys
from pathlib import Path

try:
    import runtime  # noqa: F401
except ImportError:  # not installed: use the checkout this file lives in
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from runtime import InMemoryLedgerStore, InMemoryRunStore, Runtime, StepPlan, WorkflowSpec  # noqa: E402


def greet(run, ctx):
    # A node may change run.vars; the runtime saves them after the step.
    run.vars["greeting"] = f"Hello, {run.vars['name']}!"
    return StepPlan(node_id="greet", next_node="finish")


def finish(run, ctx):
    # complete_output ends the run and becomes run.output.
    return StepPlan(node_id="finish", complete_output={"message": run.vars["greeting"]})


workflow = WorkflowSpec(workflow_id="hello_world", entry_node="greet", nodes={"greet": greet, "finish": finish})

rt = Runtime(run_store=InMemoryRunStore(), ledger_store=InMemoryLedgerStore())
run_id = rt.start(workflow=workflow, vars={"name": "world"})  # saved, nothing executed yet
state = rt.tick(workflow=workflow, run_id=run_id)  # steps until the run waits or ends

print(f"run {run_id}")
print(f"output: {state.output}")
# Moving from node to node writes no ledger record; completing the run writes one.
for record in rt.get_ledger(run_id):
    print(f"ledger: node={record['node_id']} status={record['status']} result={record['result']}")
print(f"status: {state.status.value}")
