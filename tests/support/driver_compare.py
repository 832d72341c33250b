"""Play a scenario on the in-process ``Runtime`` and compare a driver's result with it.

The Celery driver must end every scenario of ``support.celery_scenarios`` with the same state
and ledger as the in-process runtime (DESIGN.md, "one kernel, two drivers"), save for ids and
times; the worker suite and the stub-dispatcher suite both check that with these helpers.
"""

from __future__ import annotations

from typing import Any

from runtime import HashChainedLedgerStore, InMemoryLedgerStore, InMemoryRunStore, RunStatus, Runtime
from runtime.waitset import DELIVERY_TYPES
from workers.registry import registry

#: Run-state fields that differ between two runs of the same scenario.
VOLATILE_STATE = {"created_at", "updated_at"}
#: Ledger-record fields that differ between two runs of the same scenario.
VOLATILE_RECORD = {"step_id", "started_at", "ended_at", "prev_hash", "record_hash"}


#: The driver scenarios: workflow id, vars, then what a person or a producer does while the
#: run waits (``("respond", answer)`` or ``("emit", (wait_key, payload))``).
SCENARIOS = [
    ("chain", {}, []),
    ("branch", {"x": 3}, []),
    ("branch", {"x": 30}, []),
    ("tool_loop", {}, []),
    ("tools", {}, []),
    ("llm", {}, []),
    ("llm_flaky", {}, []),
    ("llm_broken", {}, []),
    ("ask", {}, [("respond", "y")]),
    ("ask_no_prompt", {}, []),
    ("wait_event", {}, [("emit", ("evt:go", {"v": 1}))]),
    ("wait_event_no_key", {}, []),
    ("wait_past", {}, []),
    ("agent", {"context": {"task": "ship"}}, [("respond", "yes")]),
    ("parent_async", {}, []),
    ("parent_unknown_child", {}, []),
]


def in_process() -> Runtime:
    """A ``Runtime`` with the workers' registry: its workflows, handlers and effect policy."""
    return Runtime(run_store=InMemoryRunStore(), ledger_store=HashChainedLedgerStore(InMemoryLedgerStore()),
                   effect_handlers=registry.effect_handlers, workflow_registry=registry.workflows,
                   effect_policy=registry.effect_policy)


def comparable(state: Any, ledger: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A run's state and ledger without the fields that differ between two runs, and without
    the delivery records (``wait_answer``, ``wait_emit``...): the one intended difference in the
    ledger of a run that waited (the driver records who delivered what; the in-process runtime
    keeps 0.2.0's ledger, which records no delivery). ``delivery_records`` checks them."""
    s = {k: v for k, v in state.to_dict().items() if k not in VOLATILE_STATE}
    return s, [{k: v for k, v in r.items() if k not in VOLATILE_RECORD} for r in ledger
               if not _is_delivery(r)]


def _is_delivery(record: dict[str, Any]) -> bool:
    return (record.get("effect") or {}).get("type") in DELIVERY_TYPES


def delivery_records(ledger: list[dict[str, Any]]) -> list[tuple[str, Any, Any]]:
    """(type, wait, delivered payload) of each delivery record of a ledger, in order."""
    return [(r["effect"]["type"], r["result"]["wait"], r["result"].get("answer")) for r in ledger if _is_delivery(r)]


def play_in_process(rt: Runtime, workflow_id: str, run_id: str, vars: dict[str, Any], actions: list) -> None:
    """Start and drive a run to its end; ``actions`` answer its waits in order:
    ``("respond", answer)`` or ``("emit", (wait_key, payload))``."""
    wf = registry.workflows.get_or_raise(workflow_id)
    rt.start(workflow=wf, vars=vars, run_id=run_id)
    state = rt.tick(workflow=wf, run_id=run_id, max_steps=10_000)
    for action, arg in actions:
        assert state.status == RunStatus.WAITING, state
        if action == "respond":
            state = rt.resume(workflow=wf, run_id=run_id, wait_key=state.waiting.wait_key, payload=arg)
        elif action == "emit":
            state = rt.resume(workflow=wf, run_id=run_id, wait_key=arg[0], payload=arg[1])


def check_sync_child_parent(state: Any, ledger: list[dict[str, Any]], rt: Runtime) -> str:
    """The ``parent_sync`` run a driver ended (``state``, ``ledger``) against the in-process one
    of the same id: same state, and the one intended difference (D6) in the ledger: the
    effect's record is ``waiting`` on the child, not ``completed``. Returns the child's id."""
    exp_state, exp_ledger = comparable(rt.get_state(state.run_id), rt.get_ledger(state.run_id))
    got_state, got_ledger = comparable(state, ledger)
    assert got_state == exp_state  # same output, same vars (the child's output at result_key)
    child_id = str(state.vars["child"]["sub_run_id"])
    assert state.output["child"] == {"sub_run_id": child_id, "output": {"visited": 3}}
    assert [r["status"] for r in exp_ledger] == ["started", "completed", "completed"]
    assert [r["status"] for r in got_ledger] == ["started", "waiting", "completed"]
    assert got_ledger[1]["result"]["wait"]["wait_key"] == f"subworkflow:{child_id}"
    assert got_ledger[0] == exp_ledger[0] and got_ledger[2] == exp_ledger[2]
    return child_id
