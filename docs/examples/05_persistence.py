"""Persistence: a run started in one process is finished by another.

This process starts a run on JSON files and leaves it waiting for an answer. It then
launches a second Python process (this same file, with ``--resume DIR``) that knows
nothing but the directory: it rebuilds the runtime from the files, answers the question
and completes the run. Back here, the hash-chained ledger both processes wrote is verified.

Run it from the repository root:  python docs/examples/05_persistence.py [DIR]
(without DIR the files go to a temporary directory that is removed at the end).
"""

import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import runtime  # noqa: F401
except ImportError:  # not installed: use the checkout this file lives in
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from runtime import (  # noqa: E402
    Effect,
    EffectType,
    HashChainedLedgerStore,
    RunStatus,
    Runtime,
    StepPlan,
    WorkflowSpec,
    verify_ledger_chain,
)
from stores import JsonFileRunStore, JsonlLedgerStore  # noqa: E402


# The workflow is code: both processes import it from this file. Only the run's data is on disk.
def prepare(run, ctx):
    run.vars["release"] = "1.4.2"
    return StepPlan(node_id="prepare", next_node="confirm")


def confirm(run, ctx):
    question = Effect(EffectType.ASK_USER, {"prompt": f"Deploy {run.vars['release']}?"}, result_key="answer")
    return StepPlan(node_id="confirm", effect=question, next_node="deploy")


def deploy(run, ctx):
    return StepPlan(node_id="deploy", complete_output={"deployed": run.vars["release"], "by": run.vars["answer"]})


workflow = WorkflowSpec(
    workflow_id="deploy", entry_node="prepare", nodes={"prepare": prepare, "confirm": confirm, "deploy": deploy}
)


def build_runtime(directory):
    # Run states: one run_<id>.json each. Ledger: one ledger_<id>.jsonl each, every record hash-chained.
    return Runtime(
        run_store=JsonFileRunStore(directory),
        ledger_store=HashChainedLedgerStore(JsonlLedgerStore(directory)),
    )


def second_process(directory):
    rt = build_runtime(directory)
    for run in rt.run_store.list_runs(status=RunStatus.WAITING, workflow_id="deploy"):
        print(f"  [process 2] found run {run.run_id} waiting: {run.waiting.prompt!r}; answering 'ops-team'")
        state = rt.resume(workflow=workflow, run_id=run.run_id, wait_key=run.waiting.wait_key, payload="ops-team")
        print(f"  [process 2] run {run.run_id} is {state.status.value}: {state.output}")


def first_process(directory):
    rt = build_runtime(directory)
    run_id = rt.start(workflow=workflow)
    state = rt.tick(workflow=workflow, run_id=run_id)
    files = sorted(p.name for p in Path(directory).iterdir())
    print(f"[process 1] run {run_id} is {state.status.value}; files: {files}")

    sys.stdout.flush()  # keep our lines before the child's in the output
    child = subprocess.run([sys.executable, __file__, "--resume", str(directory)])
    if child.returncode != 0:
        sys.exit(f"the second process failed with exit code {child.returncode}")

    # Read everything back from disk: nothing of the child's work is in this process's memory.
    state = JsonFileRunStore(directory).load(run_id)
    records = JsonlLedgerStore(directory).list(run_id)
    report = verify_ledger_chain(records)
    print(f"[process 1] ledger: {[r['status'] for r in records]}")
    print(f"[process 1] chain ok: {report['ok']} ({report['count']} records, head {report['head_hash'][:16]}...)")

    # Edit one record (a copy in memory here) and the chain no longer verifies.
    records[-1]["result"] = {"completed": False}
    tampered = verify_ledger_chain(records)
    print(f"[process 1] after editing the last record: ok={tampered['ok']}, "
          f"first_bad_index={tampered['first_bad_index']}")
    print(f"status: {state.status.value}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--resume":
        second_process(sys.argv[2])
    elif len(sys.argv) == 2:
        first_process(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            first_process(tmp)
