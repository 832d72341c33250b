"""Schedules benchmark (issue 16): how late a fire's run starts, with one and with three beats.

A script, not a test. Run it from the repository root::

    .venv/bin/python tests/bench/schedules.py [--seconds 30] [--json]

It starts its own redis-server on a free port, one Celery worker (solo) and beat processes, adds
a schedule firing every second (``allow_all``, workflow ``chain``), and measures for each fire
the time from its scheduled time to its run's creation (``created_at``, written by the sweep
that fired it). Reported: p50/p99/max, and runs per fire time (must be 1). Measured with one
beat, then with three. Baseline: the sweep period (``ABSTRACTRUNTIME_SWEEP_PERIOD_S``, 1 s),
the most a fire can wait for a sweep with one beat.

Progress goes to stderr, the table (or JSON) to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent), str(HERE)]

from benchlib import log, pct  # noqa: E402

from runtime._clock import epoch_ms  # noqa: E402

from support.celery_workers import WorkerGroup  # noqa: E402
from support.redis_server import RedisServer  # noqa: E402


def measure(server: RedisServer, folder: Path, beats: int, seconds: float) -> dict[str, Any]:
    group = WorkerGroup(server.url, folder)
    try:
        group.start_worker("w1")
        for n in range(beats):
            group.start_beat(f"beat{n}")
        client = group.client()
        name = f"bench{beats}"
        log(f"{beats} beat(s): a fire every second for {seconds:.0f} s")
        client.add_schedule(name, "* * * * * *", "chain", overlap="allow_all")
        time.sleep(seconds)
        client.pause_schedule(name)
        time.sleep(2)
        runs = [r for r in client.list_runs(limit=100_000) if r.run_id.startswith(f"schedule:{name}:")]
        late = [epoch_ms(r.created_at) - epoch_ms(r.vars["_schedule"]["scheduled_at"]) for r in runs]
        per_fire = Counter(r.vars["_schedule"]["scheduled_at"] for r in runs)
        return {"beats": beats, "fires": len(per_fire), "runs": len(runs), "max_runs_per_fire": max(per_fire.values()),
                "p50_ms": pct(late, 0.5), "p99_ms": pct(late, 0.99), "max_ms": max(late),
                "early": sum(x < 0 for x in late)}
    finally:
        group.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp)) as server:
        rows = [measure(server, Path(tmp) / f"g{b}", b, args.seconds) for b in (1, 3)]
    if args.json:
        print(json.dumps({"rows": rows, "baseline_sweep_period_ms": 1000}, indent=2))
        return 0
    print("beats  fires  runs  runs/fire  p50 ms  p99 ms  max ms  early")
    for r in rows:
        print(f"{r['beats']:>5}  {r['fires']:>5}  {r['runs']:>4}  {r['max_runs_per_fire']:>9}  {r['p50_ms']:>6}  "
              f"{r['p99_ms']:>6}  {r['max_ms']:>6}  {r['early']:>5}")
    print("baseline: the sweep period, 1000 ms (the longest a fire waits for one beat's sweep)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
