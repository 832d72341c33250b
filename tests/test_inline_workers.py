"""Inline effects with continuation on real worker processes (issue 18's acceptance): a worker
SIGKILLed in the middle of an inline tool call costs one lease and records the tool's result
once; a run of 1,000 inline calls hands its worker back at the budget, so a run started later
moves before it ends."""

from __future__ import annotations

from typing import Any

import pytest

from runtime import RunStatus

from support.processes import until

pytestmark = pytest.mark.timeout(240)


def test_a_worker_killed_in_an_inline_call_costs_one_lease_and_one_result(fresh, tmp_path):
    g = fresh(imports="support.inline_scenarios", steps_per_task=16, effect_lease_s=3, tick_lease_s=3,
              sweep_period_s=1)
    g.start_worker("w1", queues="ticks,timers,maintenance")  # (no tools queue: the call can only run inline)
    g.start_beat()
    client = g.client()
    marker = tmp_path / "called"
    run_id = client.start("stall_once_calls", vars={"n": 1, "path": str(marker)})
    assert until(marker.exists, timeout=30)  # the tool runs, inside the tick task of w1
    assert client.get_state(run_id).status == RunStatus.RUNNING
    # explain: moving, with the tool's name (not "no worker consumes tools")
    said = client.explain(run_id)
    assert said.code.value == "MOVING" and "running stall_once inline" in said.sentence, said
    g.kill("w1")
    g.start_worker("w2", queues="ticks,tools,timers,maintenance")  # (the sweep sends the call to its queue)
    state = client.wait_for(run_id, ["completed", "failed"], timeout=60)
    assert state.status == RunStatus.COMPLETED and state.output == {"count": 1}
    ledger = client.get_ledger(run_id)
    done = [r for r in ledger if (r.get("effect") or {}).get("type") == "tool_calls" and r["status"] == "completed"]
    assert len(done) == 1 and done[0]["result"]["results"][0]["output"] == "done"
    assert client.verify(run_id)["ok"]


def steps_counted(folder: Any, workflow: str) -> tuple[float, float]:
    """(tick and effect tasks, steps run inline) of ``workflow``, stale ones left out, from the
    workers' multiprocess metric files (``docs/metrics.md``)."""
    import socket

    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder / socket.gethostname()))
    tasks = inline = 0.0
    for family in registry.collect():
        for s in family.samples:
            if s.labels.get("workflow") != workflow or s.labels.get("outcome") == "stale":
                continue
            if s.name == "abstractruntime_tasks_total" and s.labels["task"] != "wake":
                tasks += s.value
            elif s.name == "abstractruntime_inline_steps_total":
                inline += s.value
    return tasks, inline


def test_a_long_inline_run_hands_its_worker_back(fresh, tmp_path):
    g = fresh(imports="support.inline_scenarios", steps_per_task=20, metrics_dir=str(tmp_path / "metrics"))
    g.start_worker("w1", queues="ticks,tools,timers,maintenance")  # one solo worker: one task at a time
    client = g.client()
    long_run = client.start("quick_calls", vars={"n": 1000})
    assert until(lambda: len(client.get_ledger(long_run)) >= 20, timeout=30)
    short = client.start("quick_calls", vars={"n": 3})
    assert client.wait_for(short, ["completed"], timeout=60).status == RunStatus.COMPLETED
    # the short run, started later, ended while the long one still ran on the same worker
    assert client.get_state(long_run).status == RunStatus.RUNNING
    state: Any = client.wait_for(long_run, ["completed"], timeout=180)
    assert state.output == {"count": 1000}
    # and every step of the long run is in its ledger, chained
    assert client.verify(long_run)["ok"]
    assert len([r for r in client.get_ledger(long_run) if r["status"] == "completed"]) >= 1000
    # Every step is counted once, as a task or as a step run inline: three a call (the call's
    # tick, the tool, the check's tick), most of them inline
    tasks, inline = steps_counted(tmp_path / "metrics", "quick_calls")
    assert tasks + inline == 3 * (1000 + 3) and inline > 10 * tasks, (tasks, inline)
