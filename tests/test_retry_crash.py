"""Retry of a failed run survives a worker SIGKILL in the middle (issue 13, acceptance).

Real Redis, real Celery worker processes and beat, the ``abstractruntime retry`` console
script: a run fails at a broken node after two tool calls; the operator retries it once the
fix is in; while the retried run executes a slow tool, its worker is SIGKILLed. A new worker
and beat's sweep recover it, it completes, the earlier tool calls did not run again and the
ledger verifies, naming the operator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runtime import RunStatus

from support.celery_workers import WorkerGroup
from support.processes import until

TESTS_DIR = Path(__file__).resolve().parent
CLI = str(Path(sys.executable).with_name("abstractruntime"))
#: Leases and the sweep period (seconds): a lost effect is sent again about a lease later.
LEASE_S = 2.0
SWEEP_S = 0.5

pytestmark = pytest.mark.timeout(120)


def cli(group: WorkerGroup, *args: str, actor: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_") and k != "PYTHONPATH"}
    env.update(group.env, PYTHONPATH=str(TESTS_DIR), ABSTRACTRUNTIME_ACTOR=actor)
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def deployment(redis_server: Any, tmp_path: Path) -> Any:
    g = WorkerGroup(redis_server.url, tmp_path / "g", tick_backoff_s=0.05, tick_lease_s=LEASE_S,
                    effect_lease_s=LEASE_S, sweep_period_s=SWEEP_S)
    yield g
    g.close()


def test_a_retried_run_survives_a_worker_sigkill_and_earlier_steps_run_once(deployment, tmp_path):
    g = deployment
    g.start_worker("w1")
    g.start_beat()
    client = g.client()
    counter, fixed, started = tmp_path / "calls.txt", tmp_path / "fixed", tmp_path / "a4-started"
    # Given a run that failed at a3 after a1 and a2 called the counting tool
    rid = client.start("fix_me_then_slow", vars={"counter": str(counter), "fixed": str(fixed),
                                                 "started": str(started), "seconds": 60})
    failed = client.wait_for(rid, ("completed", "failed", "cancelled"), timeout=30)
    assert (failed.status, failed.current_node) == (RunStatus.FAILED, "a3")
    assert counter.read_text().splitlines() == ["a1", "a2"]
    head = client.backend.ledger.chain_head(rid)
    # If the fix is deployed and the operator retries through the CLI
    fixed.touch()
    out = cli(g, "--json", "retry", rid, "--reason", "deployed the a3 fix", actor="carol@ops")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["current_node"] == "a3"
    # and the worker is SIGKILLed while the retried run is inside a4's slow tool
    assert until(started.exists), "a4's slow tool never started"
    running = client.get_state(rid)
    assert (running.status, running.current_node) == (RunStatus.RUNNING, "a4")
    g.kill("w1")
    # I expect a new worker and beat's sweep (beat runs on) to recover it, and the run to complete
    g.start_worker("w2")
    done = client.wait_for(rid, ("completed", "failed", "cancelled"), timeout=30)
    assert done.status == RunStatus.COMPLETED, done.error
    assert sorted(done.output["calls"]) == ["a1", "a2"]
    assert done.output["slow"]["a4"]["results"][0]["output"] == "a4"
    # a1 and a2 ran once only; a4's tool ran twice: the killed call and the one that landed
    assert counter.read_text().splitlines() == ["a1", "a2", "a4", "a4"]
    ledger = client.get_ledger(rid)
    # one record pair per tool step: the recovered a4 landed its first attempt, no duplicate
    tools = [(r["node_id"], r["status"], r["attempt"]) for r in ledger if (r.get("effect") or {}).get("type")
             == "tool_calls"]
    assert tools == [(node, status, 1) for node in ("a1", "a2", "a4") for status in ("started", "completed")], tools
    # and the ledger verifies, naming who retried, why, and the head it continues from
    assert client.verify(rid)["ok"]
    [record] = [r for r in ledger if (r.get("effect") or {}).get("type") == "operator_retry"]
    assert record["actor_id"] == "carol@ops" and record["result"]["reason"] == "deployed the a3 fix"
    assert record["result"]["from_node"] == "a3" and record["result"]["continues_from"] == head
    # The first worker died holding a4's lease: the sweep (not a retry of the run) sent it again
    assert f"sweep: lease of run {rid} expired; effect sent again" in g.log("w2")
