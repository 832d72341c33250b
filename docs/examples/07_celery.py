"""Runs on Celery workers, with nothing configured: a tool call, a question, an answer.

This file is both sides. Run as a script it is the producer: it starts a Celery worker
(``celery -A workers.app worker``, told to import this file as a module, which registers
the workflow and the tool there), starts a run, answers the run's question, and waits
for the result. With no ``ABSTRACTRUNTIME_REDIS_URL`` the runs and the broker are an
embedded redis-server in a temporary folder (``ABSTRACTRUNTIME_DATA_DIR`` or the first
argument picks another), which the worker process shares.

Run it from the repository root:  python docs/examples/07_celery.py [DATA_DIR]
Needs the Celery extra:  pip install -e '.[celery]'
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import runtime  # noqa: F401
except ImportError:  # not installed: use the checkout this file lives in
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from runtime import Effect, EffectType, StepPlan, WorkflowSpec  # noqa: E402
from workers.registry import register_workflow, tool  # noqa: E402


@tool
def price(item: str, quantity: int) -> float:
    return {"coffee": 3.5, "bagel": 2.25}[item] * quantity


def quote(run, ctx):
    calls = [{"name": "price", "arguments": {"item": run.vars["item"], "quantity": run.vars["quantity"]},
              "call_id": "1"}]
    return StepPlan(node_id="quote", effect=Effect(EffectType.TOOL_CALLS, {"tool_calls": calls}, result_key="quote"),
                    next_node="confirm")


def confirm(run, ctx):
    total = run.vars["quote"]["results"][0]["output"]
    question = Effect(EffectType.ASK_USER, {"prompt": f"Pay {total:.2f}?", "choices": ["yes", "no"]},
                      result_key="answer")
    return StepPlan(node_id="confirm", effect=question, next_node="done")


def done(run, ctx):
    total = run.vars["quote"]["results"][0]["output"]
    return StepPlan(node_id="done", complete_output={"paid": total if run.vars["answer"] == "yes" else 0})


register_workflow(WorkflowSpec(workflow_id="order", entry_node="quote",
                               nodes={"quote": quote, "confirm": confirm, "done": done}), replace=True)


def main(data_dir: str) -> None:
    from workers import Client, WorkerSettings

    here = Path(__file__).resolve()
    env = {**os.environ, "ABSTRACTRUNTIME_DATA_DIR": data_dir, "ABSTRACTRUNTIME_IMPORTS": here.stem,
           "PYTHONPATH": os.pathsep.join([str(here.parent), str(here.parents[2]), os.environ.get("PYTHONPATH", "")])}
    settings = WorkerSettings.from_env(env)
    # This process has the workflow already (it is this file); only the worker imports it.
    client = Client(WorkerSettings.from_env({**env, "ABSTRACTRUNTIME_IMPORTS": ""}))
    log = open(Path(data_dir) / "worker.log", "w")
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-P", "solo",
                               "-Q", ",".join(settings.queues), "--without-gossip", "--without-mingle",
                               "--without-heartbeat", "-l", "WARNING"], env=env, stdout=log, stderr=log)
    try:
        run_id = client.start("order", vars={"item": "coffee", "quantity": 2})
        print(f"started run {run_id} on the worker")
        state = client.wait_for(run_id, timeout=60)
        print(f"{state.status.value} at {state.current_node!r}: {state.waiting.prompt} {state.waiting.choices}")
        client.respond(run_id, "yes")
        state = client.wait_for(run_id, ["completed", "failed"], timeout=60)
        print("ledger:", ", ".join(f"{r['node_id']}/{r['status']}" for r in client.get_ledger(run_id)))
        print(f"output: {state.output}")
        print(f"status: {state.status.value}")
        print(f"chain ok: {client.verify(run_id)['ok']}")
    finally:
        worker.terminate()
        worker.wait(30)
        log.close()
        client.close()


if __name__ == "__main__":
    t0 = time.monotonic()
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory(prefix="ar-celery-") as tmp:
            main(tmp)
    print(f"took {time.monotonic() - t0:.1f}s")
