"""What ``appendfsync everysec`` can lose, and how runs recover from it (``pytest -m chaos``).

A power cut with ``everysec`` loses up to about a second of commits. The test makes that
happen: it notes the size of the append-only file, lets work go on for a moment, kills
redis-server and cuts the file back to the noted size before the restart. The runs whose
last commits were lost are back at an earlier state, with that state's lease; the sweep
sends their messages again. Every run must complete, with an intact chain and one completed
record per idempotency key.
"""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path

import pytest

from runtime import RunStatus

from support.celery_workers import WorkerGroup
from support.redis_server import RedisServer

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]


def _aof(folder: Path) -> Path:
    """The file new writes go to: Redis 7's incremental file, or Redis 6's single file."""
    incr = sorted(folder.rglob("*.incr.aof"), key=lambda p: p.stat().st_mtime)
    if incr:
        return incr[-1]
    return next(folder.rglob("appendonly.aof"))


def test_commits_lost_with_everysec_are_redone(tmp_path):
    server = RedisServer(tmp_path / "redis").start(appendonly=True, appendfsync="everysec")
    group = WorkerGroup(server.url, tmp_path / "g", tick_lease_s=2, effect_lease_s=2, sweep_period_s=0.5)
    try:
        group.start_worker("a", pool="prefork", concurrency=1)
        group.start_worker("b", pool="prefork", concurrency=1)
        group.start_beat()
        client = group.client()
        runs: list[str] = []
        t0 = time.monotonic()
        mark = None
        events_at_mark = events_at_kill = 0
        while time.monotonic() - t0 < 3.0:
            runs.append(client.start("crashy"))
            runs.append(client.start("agent"))
            if mark is None and time.monotonic() - t0 > 1.5:
                aof = _aof(tmp_path / "redis")
                mark = aof.stat().st_size
                events_at_mark = client.backend.client.xlen(client.backend.keys.events())
            time.sleep(0.05)
        events_at_kill = client.backend.client.xlen(client.backend.keys.events())
        server.kill()
        with open(aof, "r+b") as f:  # the last ~1.5 s never reached the disk
            f.truncate(mark)
        server.restart()
        events_after = client.backend.client.xlen(client.backend.keys.events())
        deadline = time.monotonic() + 240
        answered: set[str] = set()
        open_runs = set(runs)
        while open_runs and time.monotonic() < deadline:
            for rid in sorted(open_runs):
                try:
                    state = client.get_state(rid)
                except Exception:  # a run created after the mark is gone: it was lost whole
                    open_runs.discard(rid)
                    continue
                if state.status == RunStatus.WAITING and state.waiting.prompt and rid not in answered:
                    client.respond(rid, "yes")
                    answered.add(rid)
                elif state.status.is_terminal:
                    open_runs.discard(rid)
            time.sleep(0.2)
        present = [r for r in runs if client.backend.runs.load(r) is not None]
        lost_whole = len(runs) - len(present)
        not_done = [r for r in present if client.get_state(r).status != RunStatus.COMPLETED]
        dup = 0
        for rid in present:
            ledger = client.get_ledger(rid)
            keys = collections.Counter(r["idempotency_key"] for r in ledger
                                       if r["status"] == "completed" and r["idempotency_key"])
            dup += sum(n - 1 for n in keys.values() if n > 1)
            assert client.verify(rid)["ok"], rid
        print(f"\neverysec loss: AOF cut from {aof.stat().st_size if aof.exists() else '?'} to {mark} bytes; "
              f"commits: {events_at_kill} before the kill, {events_at_mark} at the mark, {events_after} after the "
              f"restart ({events_at_kill - events_after} lost); runs: {len(runs)} started, {lost_whole} lost whole "
              f"(created after the mark: their producer saw them start), {len(present) - len(not_done)} of the "
              f"{len(present)} others completed; duplicate effect results: {dup}")
        assert events_after < events_at_kill  # commits really were lost
        assert not_done == [] and dup == 0
        assert os.path.exists(aof)
    finally:
        group.close()
        server.stop()
