"""Inline effects benchmark (issue 18): durable tool-call steps per second, queued against inline.

A script, not a test. Run it from the repository root::

    .venv/bin/python tests/bench/inline.py [--rounds 3] [--runs 200] [--steps 10] [--long 500] [--json]

It starts its own redis-server on a free port (broker and runs on it) and, per side, two worker
processes (``-P solo``, every queue), then runs ``--runs`` runs of ``--steps`` tool calls each
and one run of ``--long`` tool calls (each call its own durable step: a tick commits the
request, the tool runs, its outcome is committed, the next node is ticked):

* queued: ``steps_per_task=1``, every step its own task (tick -> effect task on ``tools`` -> tick);
* inline: the same tool registered ``inline=True`` and ``ABSTRACTRUNTIME_STEPS_PER_TASK=64``
  (budget 200 ms): the tick task runs the call and the next nodes itself.

Rounds alternate the sides; medians are printed with the ratio inline / queued. DBOS and
LangGraph are not measured here (not installed on this machine; the issue's table has their
figures from another sitting).
Progress goes to stderr, the table (or JSON) to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent), str(HERE)]

from benchlib import log, wait_completed  # noqa: E402

from support.celery_workers import WorkerGroup  # noqa: E402
from support.redis_server import RedisServer  # noqa: E402


def commands(server: Any) -> dict[str, int]:
    """Calls per command so far (``INFO commandstats``; commands inside scripts are counted too)."""
    stats = server.client().info("commandstats")
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}


def side(server: Any, folder: Path, inline: bool, runs: int, steps: int, long: int
         ) -> tuple[float, float, int, dict[str, float]]:
    """Tool-call steps per second: many short runs, and one long run; the tick tasks logged; and
    the Redis commands per step of the many runs (store and broker: one server)."""
    settings: dict[str, Any] = {"steps_per_task": 64, "task_budget_ms": 200} if inline else {"steps_per_task": 1}
    group = WorkerGroup(server.url, folder, imports="support.inline_scenarios", **settings)
    try:
        for i in range(2):
            group.start_worker(f"w{i}", queues="ticks,tools,timers,maintenance")
        client = group.client()
        wait_completed(client, [client.start("quick_calls", vars={"n": 3}) for _ in range(5)], what="warm-up ")
        before = commands(server)
        t0 = time.time()
        ids = [client.start("quick_calls", vars={"n": steps}) for _ in range(runs)]
        many = runs * steps / (wait_completed(client, ids, what="runs ") - t0)
        after = commands(server)
        per_step = {k: (after.get(k, 0) - before.get(k, 0)) / (runs * steps) for k in after}
        t0 = time.time()
        one = long / (wait_completed(client, [client.start("quick_calls", vars={"n": long})], what="long ") - t0)
        inline_logged = sum(group.log(f"w{i}").count("] tick run=") for i in range(2))
        return many, one, inline_logged, per_step
    finally:
        for name in list(group.procs):
            group.stop(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--long", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])
    got: dict[str, list[tuple[float, float, int, dict[str, float]]]] = {"queued": [], "inline": []}
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis") as server:
        for r in range(args.rounds):
            for name in ("queued", "inline"):
                log(f"round {r + 1}/{args.rounds}: {name}")
                got[name].append(side(server, Path(tmp) / f"{name}-{r}", name == "inline", args.runs, args.steps,
                                      args.long))
    med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v),
               statistics.median(x[2] for x in v)) for k, v in got.items()}
    cmds = {k: {c: statistics.median(x[3].get(c, 0) for x in v) for c in v[-1][3]} for k, v in got.items()}
    out: dict[str, Any] = {
        k: {"many_steps_per_s": round(a), "long_steps_per_s": round(b), "tick_tasks_logged": round(c),
            "commands_per_step": {n: round(x, 2) for n, x in sorted(cmds[k].items()) if x >= 0.01},
            "all_commands_per_step": round(sum(cmds[k].values()), 2)}
        for k, (a, b, c) in med.items()}
    out["inline_over_queued"] = {"many": round(med["inline"][0] / med["queued"][0], 2),
                                 "long": round(med["inline"][1] / med["queued"][1], 2)}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"two -P solo workers, median of {args.rounds}: {args.runs} runs x {args.steps} tool calls | "
          f"1 run x {args.long} tool calls (durable tool-call steps per second)")
    for k in ("queued", "inline"):
        print(f"{k:<7} {out[k]['many_steps_per_s']:>7} steps/s | {out[k]['long_steps_per_s']:>7} steps/s   "
              f"({out[k]['tick_tasks_logged']} tick tasks)")
    print(f"inline / queued: {out['inline_over_queued']['many']}x | {out['inline_over_queued']['long']}x")
    print(f"Redis commands per step ({args.runs} x {args.steps}; inside scripts counted too; "
          "a load is an HMGET + TIME pipelined):")
    for k in ("queued", "inline"):
        c = out[k]["commands_per_step"]
        print(f"{k:<7} {out[k]['all_commands_per_step']:>6} in all; evalsha {c.get('evalsha', 0)}, "
              f"hmget {c.get('hmget', 0)}, time {c.get('time', 0)}: "
              + ", ".join(f"{n} {x}" for n, x in c.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
