"""Soak: many waiting runs held while new work keeps arriving (``pytest -m soak``; ``--long``
for the full size: 10,000 waiting runs and 50 new runs a second for 10 minutes).

It reports Redis memory per waiting run, the p99 of run latency (start to completion of a
5-node chain) per time window, and the cost of the maintenance sweep as waiting runs grow:
the sweep reads indexes (never SCAN or KEYS), so its Redis commands per call must not grow
with the number of runs. Timings are printed, not asserted.
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime

import pytest

from support.celery_workers import WorkerGroup
from support.redis_server import RedisServer

pytestmark = [pytest.mark.soak, pytest.mark.timeout(3600)]


def _sweep_cost(client, server_client, calls: int = 20) -> tuple[float, float]:
    """Mean seconds and Redis commands per sweep, measured here on the live data."""
    server_client.config_resetstat()
    t0 = time.perf_counter()
    for _ in range(calls):
        client.engine.sweep()
    seconds = (time.perf_counter() - t0) / calls
    stats = server_client.info("commandstats")
    commands = sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_config", "cmdstat_info")) / calls
    assert "cmdstat_scan" not in stats and "cmdstat_keys" not in stats
    return seconds, commands


def test_soak(tmp_path, request):
    long = request.config.getoption("--long")
    waiting, rate, duration = (10_000, 50, 600) if long else (1_000, 20, 30)
    server = RedisServer(tmp_path / "redis").start(appendonly=True, appendfsync="everysec")
    raw = server.client()
    group = WorkerGroup(server.url, tmp_path / "g")
    try:
        group.start_worker("a", pool="prefork", concurrency=1)
        group.start_worker("b", pool="prefork", concurrency=1)
        group.start_beat()
        client = group.client()
        empty_sweep = _sweep_cost(client, raw)
        before = raw.info("memory")["used_memory"]
        parked = [client.start("ask", vars={"n": i}) for i in range(waiting)]
        deadline = time.monotonic() + 600
        while client.count(status="waiting") < waiting and time.monotonic() < deadline:
            time.sleep(0.5)
        assert client.count(status="waiting") >= waiting
        time.sleep(1)
        per_run = (raw.info("memory")["used_memory"] - before) / waiting
        full_sweep = _sweep_cost(client, raw)

        windows: list[list[float]] = []
        started: list[str] = []
        t0 = time.monotonic()
        next_at = t0
        while time.monotonic() - t0 < duration:
            started.append(client.start("chain"))
            next_at += 1 / rate
            time.sleep(max(0.0, next_at - time.monotonic()))
        deadline = time.monotonic() + 300
        for rid in started:
            client.wait_for(rid, ["completed"], timeout=max(1.0, deadline - time.monotonic()))
        window_s = max(5.0, duration / 10)
        first = None
        for rid in started:
            state = client.get_state(rid)
            created = datetime.fromisoformat(state.created_at).timestamp()
            latency = datetime.fromisoformat(state.updated_at).timestamp() - created
            first = created if first is None else first
            index = int((created - first) // window_s)
            while len(windows) <= index:
                windows.append([])
            windows[index].append(latency)
        print(f"\nsoak: {waiting:,} waiting runs, {rate} new 5-node runs/s for {duration:.0f}s")
        print(f"  Redis memory per waiting run (used_memory delta): {per_run:,.0f} B")
        print(f"  sweep with no runs: {empty_sweep[0] * 1e3:.2f} ms, {empty_sweep[1]:.1f} Redis commands; "
              f"with {waiting:,} waiting: {full_sweep[0] * 1e3:.2f} ms, {full_sweep[1]:.1f} commands")
        for i, lat in enumerate(windows):
            if lat:
                lat.sort()
                p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
                print(f"  window {i * window_s:5.0f}s: {len(lat):5d} runs, latency p50 "
                      f"{statistics.median(lat) * 1e3:7.1f} ms, p99 {p99 * 1e3:7.1f} ms")
        assert full_sweep[1] <= empty_sweep[1] + 2  # index reads: no growth with the number of runs
        assert client.count(status="waiting") >= waiting
        for rid in parked[:5]:
            client.cancel(rid)
    finally:
        group.close()
        server.stop()
