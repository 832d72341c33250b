"""Metrics benchmark (issue 16): what counting a task costs against what a tick costs.

A script, not a test. Run it from the repository root::

    .venv/bin/python tests/bench/metrics.py [--ticks 3000] [--json]

It starts its own redis-server on a free port and runs ``--ticks`` ticks of effect-free chains
through ``Engine`` and the stub dispatcher (the tick's whole work: load, node, commit), timing
each. Then, in a child process with ``ABSTRACTRUNTIME_METRICS_DIR`` set (multiprocess mode, as
in a worker), the hooks one task calls (:func:`workers.metrics.task_done`, which writes a
counter and a histogram to memory-mapped files), and in one without it (metrics off: the hook
returns at once). Reported: µs per tick, µs per task's counting on and off, and their ratios to
a tick (the issue's target: metrics ≤ 1 % of ticks/s).

Progress goes to stderr, the table (or JSON) to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent), str(HERE)]

from benchlib import log  # noqa: E402

from support.redis_server import RedisServer  # noqa: E402

_HOOK = r"""
import sys, time
sys.path[:0] = {paths!r}
from workers import metrics
n = {n}
metrics.task_done("tick", "wf", "next", 0.001)  # the first call makes the files
t0 = time.perf_counter()
for i in range(n):
    metrics.task_done("tick", "wf", "next", 0.001)
print((time.perf_counter() - t0) / n * 1e6)
"""


def tick_us(server: RedisServer, ticks: int) -> float:
    from runtime.models import StepPlan
    from runtime.spec import WorkflowSpec
    from stores.redis import RedisBackend
    from workers.registry import Registry
    from workers.settings import WorkerSettings
    from workers.testing import make_stub_engine

    def node(i: int, last: bool) -> Any:
        def run(r: Any, ctx: Any) -> StepPlan:
            return StepPlan(node_id=f"n{i}", complete_output={}) if last else StepPlan(node_id=f"n{i}",
                                                                                    next_node=f"n{i + 1}")
        return run

    nodes = {f"n{i}": node(i, i == 49) for i in range(50)}
    reg = Registry()
    spec = reg.register_workflow(WorkflowSpec(workflow_id="chain50", entry_node="n0", nodes=nodes))
    engine, stub = make_stub_engine(RedisBackend(server.client(), prefix="m"), reg, WorkerSettings())
    runs = max(1, ticks // 50)
    t0 = time.perf_counter()
    for _ in range(runs):
        engine.create(spec)
        stub.run_until_quiet(engine)
    return (time.perf_counter() - t0) / (runs * 50) * 1e6


def hook_us(n: int, folder: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("ABSTRACTRUNTIME_METRICS_DIR", "PROMETHEUS_MULTIPROC_DIR")}
    if folder:
        env["ABSTRACTRUNTIME_METRICS_DIR"] = folder
    code = _HOOK.format(paths=[str(HERE.parents[1])], n=n)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ticks", type=int, default=3000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp)) as server:
        log(f"{args.ticks} ticks through the stub dispatcher")
        tick = tick_us(server, args.ticks)
        log("the per-task hook, metrics on and off")
        on = hook_us(20_000, str(Path(tmp) / "metrics"))
        off = hook_us(20_000, None)
    out = {"tick_us": round(tick, 1), "hook_on_us": round(on, 2), "hook_off_us": round(off, 3),
           "on_pct_of_tick": round(100 * on / tick, 2), "off_pct_of_tick": round(100 * off / tick, 3)}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"tick (stub dispatcher, effect-free)   {out['tick_us']:>8} µs")
        for side in ("on", "off"):
            print(f"counting one task, metrics {side:<3}        {out[f'hook_{side}_us']:>8} µs  = "
                  f"{out[f'{side}_pct_of_tick']}% of a tick")
    return 0


if __name__ == "__main__":
    sys.exit(main())
