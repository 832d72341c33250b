"""Workflows that open named waits (``runtime/waitset.py``), for ``tests/test_waits_driver.py``
and ``tests/test_waits_acceptance.py``. Imported, the module registers them in the process-wide
registry (worker processes list it in ``ABSTRACTRUNTIME_IMPORTS``).

* ``named_waits``: node ``ask`` opens the set ``vars["waits"]`` in mode ``vars["mode"]``
  (default ``all``); ``done`` completes with the answers; ``chase`` (an ``on_timeout`` goto
  target) completes with them and ``chased: true``.
* ``tree_of_waits``: starts ``named_waits`` as a child with ``vars["waits"]`` (sync, or async
  with ``vars["async"]``, the parent then waiting for the event ``hold:<its run id>``), so the
  child's waits are listed under this run too.
"""

from __future__ import annotations

from typing import Any

from runtime import Effect, EffectType, StepPlan, WorkflowSpec

LEGAL = {"name": "legal", "prompt": "Is the contract approved?", "schema": {"type": "boolean"},
         "assignees": ["legal-team"], "deadline": "10s", "reminders": ["4s"],
         "escalation": [{"after": "7s", "reassign": ["manager"], "notify": ["cfo"]}], "on_timeout": "fail"}
FINANCE = {"name": "finance", "prompt": "Budget, in k EUR?", "schema": {"type": "integer", "minimum": 1,
                                                                       "maximum": 1000},
           "assignees": ["finance-team"]}
COMMENT = {"name": "comment", "prompt": "Any comment?", "schema": {"type": "string"}, "deadline": "6s",
           "on_timeout": {"answer": ""}, "assignees": ["legal-team"]}
#: The acceptance set of issue 15.
THREE = [LEGAL, FINANCE, COMMENT]


def named_waits() -> WorkflowSpec:
    def ask(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="ask", effect=Effect(EffectType.OPEN_WAITS, {
            "waits": run.vars["waits"], "mode": run.vars.get("mode", "all")}, result_key="answers"),
            next_node="done")

    def done(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="done", complete_output={"answers": run.vars.get("answers")})

    def chase(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="chase", complete_output={"answers": run.vars.get("answers"), "chased": True})

    return WorkflowSpec(workflow_id="named_waits", entry_node="ask", nodes={"ask": ask, "done": done, "chase": chase})


def tree_of_waits() -> WorkflowSpec:
    def start(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="start", effect=Effect(EffectType.START_SUBWORKFLOW, {
            "workflow_id": "named_waits", "vars": {"waits": run.vars["waits"]}, "async": run.vars.get("async", False)},
            result_key="child"), next_node="hold" if run.vars.get("async") else "done")

    def hold(run: Any, ctx: Any) -> StepPlan:  # an async parent waits for an event of its own
        return StepPlan(node_id="hold", effect=Effect(EffectType.WAIT_EVENT, {"wait_key": f"hold:{run.run_id}"}),
                        next_node="done")

    def done(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="done", complete_output={"child": run.vars.get("child")})

    return WorkflowSpec(workflow_id="tree_of_waits", entry_node="start",
                        nodes={"start": start, "hold": hold, "done": done})


def register(reg: Any) -> None:
    for spec in (named_waits(), tree_of_waits()):
        reg.register_workflow(spec, replace=True)


from workers.registry import registry  # noqa: E402

register(registry)
