"""Workflows and a downstream store for the fencing tests (tests/test_fencing.py), imported by
the workers those tests start (``ABSTRACTRUNTIME_IMPORTS``) and by the tests themselves.

``fenced_write`` is a tool that, like a payment or a database write, changes something
outside the runtime: it writes to :class:`TokenStore`, which keeps the highest fencing token
it saw per run and refuses a write that carries an older one, as a downstream service
given ``current_execution().fencing_token`` can.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from runtime import Effect, EffectType, StaleLease, StepPlan, WorkflowSpec, current_execution
from workers.registry import register_workflow, tool


class TokenStore:
    """A downstream store in one JSON-lines file (visible across worker processes): each write
    names its run and fencing token; an older token than one already seen is refused."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def write(self, run_id: str, token: int, value: Any) -> None:
        seen = max((e["token"] for e in self.entries() if e["run_id"] == run_id and e["ok"]), default=-1)
        ok = token >= seen
        with open(self.path, "a") as f:
            f.write(json.dumps({"run_id": run_id, "token": token, "value": value, "ok": ok, "pid": os.getpid()})
                    + "\n")
        if not ok:
            raise StaleLease(run_id=run_id, token=token, current=seen)


def started(gate: str | Path) -> list[dict[str, int]]:
    """The attempts of ``fenced_write`` that started, as ``{"pid", "token"}``, oldest first."""
    gate = Path(gate)
    marks = sorted(gate.parent.glob(gate.name + ".started.*"), key=lambda p: p.stat().st_mtime_ns)
    return [json.loads(p.read_text()) for p in marks]


@tool
def fenced_write(store: str, value: Any, gate: str = "") -> dict[str, Any]:
    """Write ``value`` to the TokenStore at ``store`` with this attempt's fencing token.

    With ``gate``: first say it started (file ``<gate>.started.<pid>``, see :func:`started`);
    the first attempt to start then waits while the file ``<gate>.hold`` exists (up to a
    minute), so that a test can pause it past its lease; later attempts do not wait."""
    ex = current_execution()
    assert ex is not None, "a tool run by a worker sees its execution"
    if gate:
        first = not started(gate)
        Path(f"{gate}.started.{os.getpid()}.{ex.fencing_token}").write_text(
            json.dumps({"pid": os.getpid(), "token": ex.fencing_token}))
        deadline = time.monotonic() + 60
        while first and Path(f"{gate}.hold").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    TokenStore(store).write(ex.run_id, ex.fencing_token, value)
    return {"token": ex.fencing_token, "pid": os.getpid()}


def _fenced() -> WorkflowSpec:
    """One tool call to ``fenced_write`` with ``vars["store"]`` and ``vars["gate"]``, then completion."""

    def write(run: Any, ctx: Any) -> StepPlan:
        v = run.vars
        call = {"name": "fenced_write", "arguments": {"store": v["store"], "value": v.get("value", 1),
                                                       "gate": v.get("gate", "")}}
        return StepPlan(node_id="write", effect=Effect(type=EffectType.TOOL_CALLS, payload={"tool_calls": [call]},
                                                       result_key="written"), next_node="done")

    def done(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="done", complete_output={"written": run.vars.get("written")})

    return WorkflowSpec(workflow_id="fenced", entry_node="write", nodes={"write": write, "done": done})


register_workflow(_fenced(), replace=True)
