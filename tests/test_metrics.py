"""Prometheus metrics (issue 16, part 2) scraped from ``abstractruntime metrics`` while real
worker processes and beat run a mixed workload, parsed with ``prometheus_client.parser``:

* the tick tasks counted equal the tick outcome lines the worker logged, and the steps the
  runs took (a chain of five nodes: five ticks, counted once across pool children);
* the timer lateness histogram counts every timer fired (``WAIT_UNTIL`` wakes, named waits'
  reminders and deadline, from their ledger records);
* LLM tokens are counted by model;
* the depth of the ``llm`` queue rises while no worker consumes it (and its consumers are 0);
* lease expiries rise after a worker is SIGKILLed in the middle of an LLM call;
* every metric the Grafana dashboard queries is one the exporter serves.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from runtime import RunStatus
from workers.metrics import METRIC_NAMES

from support.processes import until
from support.redis_server import free_port

pytestmark = pytest.mark.timeout(240)

prometheus_client = pytest.importorskip("prometheus_client", reason="the metrics extra is not installed")

CLI = str(Path(sys.executable).with_name("abstractruntime"))
TESTS_DIR = Path(__file__).resolve().parent
DASHBOARD = TESTS_DIR.parent / "observability" / "grafana" / "dashboards" / "abstractruntime.json"


def scrape(port: int) -> dict[str, list[Any]]:
    """Sample name -> its samples; every name a served family declares is a key (a family with
    no sample yet, such as stuck runs on a healthy fleet, has an empty list)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, list[Any]] = {}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    for family in text_string_to_metric_families(text):
        for suffix in suffixes.get(family.type, ("",)):
            out.setdefault(family.name + suffix, [])
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def total(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, ()) if all(s.labels.get(k) == v for k, v in labels.items()))


def dashboard_metrics() -> set[str]:
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    return {m for e in exprs for m in re.findall(r"abstractruntime_[a-z_]+", e)}


def test_the_dashboard_queries_only_metrics_the_exporter_declares():
    declared = set(METRIC_NAMES)
    suffixed = {f"{n}{s}" for n in declared for s in ("", "_bucket", "_count", "_sum")}
    assert dashboard_metrics() and dashboard_metrics() <= suffixed


def test_a_scrape_after_a_mixed_workload(fresh, tmp_path):
    folder = tmp_path / "metrics"
    g = fresh(metrics_dir=str(folder), effect_lease_s=2, imports="support.celery_scenarios,support.wait_scenarios")
    # (prefork: each pool child writes its own series; no llm worker yet)
    g.start_worker("w1", queues="ticks,tools,subworkflows,timers,maintenance", pool="prefork", concurrency=2)
    g.start_beat()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_") and k != "PYTHONPATH"}
    env.update(g.env)
    env["PYTHONPATH"] = str(TESTS_DIR)
    exporter_log = open(tmp_path / "exporter.log", "wb")
    exporter = subprocess.Popen([CLI, "metrics", "--port", str(port)], env=env, stdout=exporter_log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert until(lambda: _up(port), timeout=30), (tmp_path / "exporter.log").read_text()
        client = g.client()
        # Given a mixed workload: effect-free chains, sleeps, a named wait with two reminders and a
        # deadline, and an LLM call nobody consumes yet
        chains = [client.start("chain") for _ in range(5)]
        due = (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat()
        sleepers = [client.start("sleep_until", vars={"until": due}) for _ in range(3)]
        asks = client.start("named_waits", vars={"waits": [{"name": "q", "prompt": "?", "reminders": ["300ms", "600ms"],
                                                           "deadline": "1s", "on_timeout": {"answer": "late"}}]})
        llm = client.start("llm_usage", tenant="acme")
        for rid in [*chains, *sleepers, asks]:
            assert client.wait_for(rid, ["completed", "failed"], timeout=30).status == RunStatus.COMPLETED
        # I expect the llm queue to hold the call, with no consumer
        samples = scrape(port)
        assert total(samples, "abstractruntime_queue_depth", queue="llm") >= 1
        assert total(samples, "abstractruntime_queue_consumers", queue="llm") == 0
        assert total(samples, "abstractruntime_runs", status="completed") >= 9
        # Once a worker takes the llm queue, the call runs and its tokens are counted
        g.start_worker("w2", queues="llm")
        assert client.wait_for(llm, ["completed"], timeout=30).status == RunStatus.COMPLETED
        time.sleep(1.5)  # the outcome lines and the series are written after each task
        samples = scrape(port)
        assert total(samples, "abstractruntime_queue_depth", queue="llm") == 0
        assert total(samples, "abstractruntime_llm_tokens_total", model="fake-1", direction="input",
                     tenant="acme") == len("usage: twelve tokens")
        # Ticks counted: as many as the tick outcome lines the workers logged (stale ones are
        # logged at DEBUG, so they are left out of both)
        logged = sum(len(re.findall(r"\] tick run=", g.log(name))) for name in ("w1", "w2"))
        counted = sum(s.value for s in samples["abstractruntime_tasks_total"]
                      if s.labels["task"] == "tick" and s.labels["outcome"] != "stale")
        assert counted == logged > 0
        # and a tick per step each run took: the five chains ran five nodes each, one tick per
        # node (a chain's ledger keeps only its end: transitions without effects are not ledger
        # records, so the steps are the nodes), counted once whatever pool child ran it, as a
        # task or as a step its task ran after its own (continuation, on by default)
        chain_ticks = sum(s.value for name, step in (("abstractruntime_tasks_total", "task"),
                                                     ("abstractruntime_inline_steps_total", "step"))
                          for s in samples[name] if s.labels[step] == "tick" and s.labels["workflow"] == "chain"
                          and s.labels["outcome"] != "stale")
        assert chain_ticks == 5 * len(chains)
        # Every timer fired is in the lateness histogram: 3 wakes, 2 reminders and a deadline
        fired = [r for r in client.get_ledger(asks) if (r["effect"] or {}).get("type", "").startswith("wait_")]
        assert len(fired) == 3
        assert total(samples, "abstractruntime_timer_lateness_seconds_count", kind="until") == 3
        assert total(samples, "abstractruntime_timer_lateness_seconds_count", kind="reminder") == 2
        assert total(samples, "abstractruntime_timer_lateness_seconds_count", kind="deadline") == 1
        # A worker killed in the middle of an LLM call: its lease expires and the sweep sends it again
        before = total(samples, "abstractruntime_lease_expiries_total")
        slow = client.start("llm_slow5")
        assert until(lambda: _dispatched(client, slow), timeout=20)
        time.sleep(1.0)  # w2 is inside the 5 s call
        g.kill("w2")
        time.sleep(4)  # its lease (2 s) expires, and a sweep (every second, on w1) sends the call again
        g.start_worker("w3", queues="llm")
        assert client.wait_for(slow, ["completed"], timeout=60).status == RunStatus.COMPLETED
        samples = scrape(port)
        assert total(samples, "abstractruntime_lease_expiries_total") >= before + 1
        # and every metric the dashboard queries is served
        assert dashboard_metrics() <= set(samples), dashboard_metrics() - set(samples)
    finally:
        exporter.terminate()
        exporter.wait(10)
        exporter_log.close()


def test_a_port_in_use_is_a_clear_error(fresh):
    import socket

    g = fresh()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_")}
        env.update(g.env)
        proc = subprocess.run([CLI, "metrics", "--port", str(port)], env=env, capture_output=True, text=True,
                              timeout=60)
    assert proc.returncode == 2 and f"port {port} on 127.0.0.1 is in use" in proc.stderr


def _up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            response.read()
        return True
    except OSError:
        return False


def _dispatched(client: Any, run_id: str) -> bool:
    loaded = client.backend.load_for_driver(run_id)
    return loaded is not None and loaded.dispatch is not None and loaded.dispatch.kind == "effect"
