"""One LLM call as a durable effect: the reply is recorded in the ledger, never asked twice.

With ``ABSTRACTRUNTIME_LLM_BASE_URL`` set (any OpenAI-compatible endpoint, e.g.
``http://localhost:1234/v1``, or an AbstractCore server), the call goes there, with
``ABSTRACTRUNTIME_LLM_MODEL`` and ``ABSTRACTRUNTIME_LLM_API_KEY``. Without it, the example
starts the loopback fake server the tests use (``tests/support/fake_openai.py``) and runs offline.

Run it from the repository root:  python docs/examples/08_llm_call.py
"""

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
    Runtime,
    StepPlan,
    WorkflowSpec,
)
from runtime.integrations.abstractcore import RemoteAbstractCoreLLMClient, build_effect_handlers  # noqa: E402


def ask(run, ctx):
    call = Effect(EffectType.LLM_CALL, {"prompt": run.vars["question"], "system_prompt": "Be brief.",
                                        "params": {"temperature": 0}}, result_key="reply")
    return StepPlan(node_id="ask", effect=call, next_node="done")


def done(run, ctx):
    return StepPlan(node_id="done", complete_output={"reply": run.vars["reply"]["content"]})


workflow = WorkflowSpec(workflow_id="llm_once", entry_node="ask", nodes={"ask": ask, "done": done})


def main(base_url: str, model: str, api_key: str | None) -> None:
    llm = RemoteAbstractCoreLLMClient(server_base_url=base_url, model=model, api_key=api_key, timeout_s=60)
    rt = Runtime(run_store=InMemoryRunStore(), ledger_store=InMemoryLedgerStore(),
                 effect_handlers=build_effect_handlers(llm=llm))
    run_id = rt.start(workflow=workflow, vars={"question": "Say hello in five words."})
    state = rt.tick(workflow=workflow, run_id=run_id)
    print(f"status: {state.status.value}")
    if state.error:
        print(f"error: {state.error}")
        return
    print(f"reply: {state.output['reply']}")
    record = [r for r in rt.get_ledger(run_id) if r["status"] == "completed"][0]
    print(f"recorded under idempotency key {record['idempotency_key']}: model {record['result']['model']}, "
          f"usage {record['result']['usage']}")
    print(f"tokens counted in the run's limits: {state.vars['_limits']['estimated_tokens_used']}")


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
