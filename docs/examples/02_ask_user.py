"""Ask the user: a run stops on a question and goes on when it gets the answer.

The script plays the user too: it answers the first question with ``Runtime.resume``
(giving the wait key) and the second with ``ScheduledRuntime.respond`` (which finds the
key itself).

Run it from the repository root:  python docs/examples/02_ask_user.py
"""

import sys
from pathlib import Path

try:
    import runtime  # noqa: F401
except ImportError:  # not installed: use the checkout this file lives in
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from runtime import Effect, EffectType, StepPlan, WorkflowSpec, create_scheduled_runtime  # noqa: E402


def ask_name(run, ctx):
    # ASK_USER parks the run; the answer is stored at result_key, then the run goes to next_node.
    question = Effect(EffectType.ASK_USER, {"prompt": "What is your name?"}, result_key="name")
    return StepPlan(node_id="ask_name", effect=question, next_node="ask_size")


def ask_size(run, ctx):
    question = Effect(
        EffectType.ASK_USER,
        {"prompt": "Which size?", "choices": ["small", "large"], "allow_free_text": False},
        result_key="size",
    )
    return StepPlan(node_id="ask_size", effect=question, next_node="order")


def order(run, ctx):
    return StepPlan(node_id="order", complete_output={"order": f"one {run.vars['size']} coffee for {run.vars['name']}"})


workflow = WorkflowSpec(
    workflow_id="coffee", entry_node="ask_name", nodes={"ask_name": ask_name, "ask_size": ask_size, "order": order}
)

with create_scheduled_runtime(workflows=[workflow]) as rt:
    run_id, state = rt.run(workflow)
    wait = state.waiting
    print(f"{state.status.value}: {wait.prompt!r} (wait_key={wait.wait_key})")

    # The low-level way: the caller names the wait key it answers.
    state = rt.runtime.resume(workflow=workflow, run_id=run_id, wait_key=wait.wait_key, payload="Ada")
    wait = state.waiting
    print(f"{state.status.value}: {wait.prompt!r} choices={wait.choices}")

    # The convenient way: respond() looks the wait key up.
    state = rt.respond(run_id, "large")
    print(f"output: {state.output}")
    print(f"status: {state.status.value}")
