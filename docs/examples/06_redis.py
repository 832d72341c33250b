"""Runs kept in Redis: a run parks on a question, a second process answers it.

With no ``ABSTRACTRUNTIME_REDIS_URL`` set, an embedded redis-server starts, keeping its
data in a temporary folder here (``ABSTRACTRUNTIME_DATA_DIR`` or the first argument picks
another). Each step is one atomic commit: state, ledger records and indexes together.

Run it from the repository root:  python docs/examples/06_redis.py [DATA_DIR]
Needs the Redis extra:  pip install -e '.[redis]'
"""

import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import runtime  # noqa: F401
except ImportError:  # not installed: use the checkout this file lives in
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from runtime import Effect, EffectType, Runtime, StepPlan, WorkflowSpec  # noqa: E402
from stores.redis import RedisBackend, RedisSettings  # noqa: E402


def ask(run, ctx):
    question = Effect(EffectType.ASK_USER, {"prompt": "Ship it?", "wait_key": "release:1.0"}, result_key="answer")
    return StepPlan(node_id="ask", effect=question, next_node="done")


def done(run, ctx):
    return StepPlan(node_id="done", complete_output={"shipped": run.vars["answer"] == "yes"})


workflow = WorkflowSpec(workflow_id="release", entry_node="ask", nodes={"ask": ask, "done": done})


def backend_for(data_dir: str) -> RedisBackend:
    return RedisBackend.from_settings(RedisSettings(url=None, data_dir=data_dir, prefix="example"))


def answer(data_dir: str) -> None:
    """The second process: find the run waiting on the key through the index, and answer it."""
    backend = backend_for(data_dir)
    rt = Runtime(run_store=backend.runs, ledger_store=backend.ledger)
    for run_id in backend.runs.runs_waiting_on("release:1.0"):
        state = rt.resume(workflow=workflow, run_id=run_id, wait_key="release:1.0", payload="yes")
        print(f"[process 2] answered {run_id}: {state.status.value}")


def main(data_dir: str) -> None:
    backend = backend_for(data_dir)
    rt = Runtime(run_store=backend.runs, ledger_store=backend.ledger)
    run_id = rt.start(workflow=workflow)
    state = rt.tick(workflow=workflow, run_id=run_id)
    print(f"[process 1] run {run_id}: {state.status.value}, asks {state.waiting.prompt!r}")

    # Another process (it shares the embedded server, or starts it from the same folder).
    subprocess.run([sys.executable, __file__, "--answer", data_dir], check=True)

    state = rt.get_state(run_id)
    print(f"output: {state.output}")
    print(f"status: {state.status.value}")
    report = backend.ledger.verify(run_id)
    print(f"chain ok: {report['ok']} ({report['count']} records)")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--answer":
        answer(sys.argv[2])
    elif len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(tmp)
