"""Flow-control benchmark: effects/s and dispatch latency with 3 rules on every run's path, and without.

A script, not a test. Run it from the repository root::

    .venv/bin/python tests/bench/flow.py [--runs 20] [--calls 25] [--rounds 3] [--workers 2] [--json]

It starts its own redis-server on a free port (``tests/support/redis_server.py``, no AOF) and
real worker processes (``celery -A workers.app worker -P solo``, ``tests/support/celery_workers.py``).
Each round starts ``--runs`` runs of ``flow_tools`` (``tests/bench/bench_flow.py``), each making
``--calls`` tool calls one after the other (an effect task per call, and a tick before and after),
under tenant ``bench``, and waits for all of them:

* off: no rule in the registry (the gate sees none and makes no Redis call);
* on: 3 rules on the runs' path, 3 limit types, never exhausted: ``global`` concurrency 100,000,
  ``tenant:*`` rate 1,000,000/s burst 100,000, ``agent:flow_tools`` tokens 10^12 per hour (counted,
  with an estimate of 0, since its scope is ``*``). Every effect attempt is admitted by one
  ``admit.lua`` call and gives its share back after its commit (read held set + ``admit_release.lua``).

Rounds alternate which side goes first (off, on; on, off; ...); after each change of the
registry the script waits ``flow_rules_cache_s`` (0.2 s) + 0.3 s, so every worker has read it.
That the gate really ran in an "on" round is checked from Redis (the agent rule's budget hash
exists, without an open reservation, and no holder is left).

Reported: effects/s per side (runs x calls / (last run's commit - first start)), the median of
the per-round on/off ratios (target, issue 14: >= 0.9x); and the dispatch latency, from the
start of the effect task to the start of the tool inside it (measured in the worker:
``task_prerun`` to the tool's first line, so it includes loading the run, the gate's admission
and the handler's set-up), p50/p99 per side and the difference (target: p99 added <= 2 ms).
Also, as a cross-check from the client side: ``Admission.acquire`` + ``release`` of the same 3
rules, p50/p99 (the gate's Redis calls alone).

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

from benchlib import log, pct, wait_completed  # noqa: E402

from stores.redis.admission import Admission  # noqa: E402
from stores.redis.flowkeys import FlowKeys, rule_id  # noqa: E402
from workers.flow import LimitRule  # noqa: E402
from workers.flow.resolve import registry  # noqa: E402

from support.celery_workers import WorkerGroup  # noqa: E402
from support.redis_server import RedisServer  # noqa: E402

RULES = [LimitRule(key="global", concurrency=100_000),
         LimitRule(key="tenant:*", rate=1_000_000.0, burst=100_000),
         LimitRule(key="agent:flow_tools", tokens=10**12, window_s=3600)]
#: The concrete rule ids the runs are counted under (tenant ``bench``, agent ``flow_tools``).
RULE_IDS = [rule_id("global", "*", "limit"), rule_id("tenant:bench", "*", "limit"),
            rule_id("agent:flow_tools", "*", "limit")]
CACHE_S = 0.2


class FlowBench:
    def __init__(self, server: RedisServer, folder: Path, workers: int) -> None:
        self.r = server.client()
        self.group = WorkerGroup(server.url, folder, imports="support.celery_scenarios,bench_flow",
                                 flow_rules_cache_s=CACHE_S, tick_backoff_s=0.05)
        os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
        for i in range(workers):
            self.group.start_worker(f"w{i}", queues="ticks,timers,maintenance,llm,tools,subworkflows")
        import bench_flow  # noqa: F401  (registers flow_tools here too, for start())

        self.client = self.group.client()
        #: Per side: seconds from the tick's request of each call to the tool's start (bench_flow.py).
        self.e2e: dict[str, list[float]] = {"off": [], "on": [], "warm": []}
        self.limits = registry(self.client.backend)
        self.keys = FlowKeys(self.client.backend.keys.prefix)

    def set_rules(self, on: bool) -> None:
        if on:
            for rule in RULES:
                self.limits.set_rule(rule)
        else:
            for rule in RULES:
                self.limits.delete_rule(rule_id(rule.key, rule.scope, rule.name))
        self.r.delete(self.keys.budget(RULE_IDS[2]))
        time.sleep(CACHE_S + 0.3)

    def round(self, label: str, runs: int, calls: int) -> tuple[float, list[float]]:
        """Effects/s of ``runs`` runs x ``calls`` tool calls, and the dispatch latencies (s)."""
        t0 = time.time()
        ids = [self.client.start("flow_tools", vars={"calls": calls, "label": label}, tenant="bench")
               for _ in range(runs)]
        end = wait_completed(self.client, ids, poll_s=0.01)
        lat = [float(x) for x in self.r.lrange(f"bench:flow:lat:{label}", 0, -1)]
        if len(lat) != runs * calls:
            raise RuntimeError(f"{label}: {len(lat)} tool starts for {runs * calls} calls")
        self.e2e[label.split("-")[0]] += [float(x) for x in self.r.lrange(f"bench:flow:e2e:{label}", 0, -1)]
        return runs * calls / (end - t0), lat

    def check_gate(self, on: bool) -> None:
        budget = {k.decode(): v for k, v in self.r.hgetall(self.keys.budget(RULE_IDS[2])).items()}
        if on != bool(budget):
            raise RuntimeError(f"the gate {'did not run' if on else 'ran'} in an '{'on' if on else 'off'}' round")
        if any(k.startswith("r:") for k in budget) or self.r.zcard(self.keys.holders()):
            raise RuntimeError("a share was not given back")

    def client_side(self, n: int) -> list[float]:
        """acquire + release of the 3 rules from this process (s per pair)."""
        adm = Admission(self.r, self.keys)
        rules = list(zip(RULE_IDS, [RULES[0], LimitRule(key="tenant:bench", rate=1_000_000.0, burst=100_000),
                                    RULES[2]]))
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            adm.acquire(f"client/{i}/1", rules, lease_ms=600_000)
            adm.release(f"client/{i}/1")
            out.append(time.perf_counter() - t0)
        return out

    def close(self) -> None:
        self.group.close()


def measure(server: RedisServer, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    bench = FlowBench(server, folder, args.workers)
    try:
        rates: dict[str, list[float]] = {"off": [], "on": []}
        lat: dict[str, list[float]] = {"off": [], "on": []}
        ratios = []
        bench.set_rules(False)
        bench.round("warm-up", args.runs, 5)
        for i in range(args.rounds):
            per = {}
            for side in (("off", "on") if i % 2 == 0 else ("on", "off")):
                on = side == "on" and not args.aa
                bench.set_rules(on)
                rate, ls = bench.round(f"{side}-{i}", args.runs, args.calls)
                bench.check_gate(on)
                per[side] = rate
                rates[side].append(rate)
                lat[side] += ls
                log(f"round {i + 1}: {side}: {rate:.0f} effects/s, dispatch p50 {pct(ls, 0.5) * 1e3:.2f} ms "
                    f"p99 {pct(ls, 0.99) * 1e3:.2f} ms")
            ratios.append(per["on"] / per["off"])
        client = bench.client_side(2000)
    finally:
        bench.close()
    out: dict[str, Any] = {"runs": args.runs, "calls": args.calls, "rounds": args.rounds, "workers": args.workers}
    for side in ("off", "on"):
        out[side] = {"effects_per_s": statistics.median(rates[side]), "rounds_effects_per_s": rates[side],
                     "dispatch_p50_ms": pct(lat[side], 0.5) * 1e3, "dispatch_p99_ms": pct(lat[side], 0.99) * 1e3}
    out["ratio_on_off"] = {"median": statistics.median(ratios), "rounds": ratios}
    out["added_dispatch_ms"] = {"p50": out["on"]["dispatch_p50_ms"] - out["off"]["dispatch_p50_ms"],
                                "p99": out["on"]["dispatch_p99_ms"] - out["off"]["dispatch_p99_ms"]}
    out["client_acquire_release_ms"] = {"p50": pct(client, 0.5) * 1e3, "p99": pct(client, 0.99) * 1e3}
    for side in ("off", "on"):
        e2e = bench.e2e[side]
        out[side]["request_to_tool_p50_ms"] = pct(e2e, 0.5) * 1e3
        out[side]["request_to_tool_p99_ms"] = pct(e2e, 0.99) * 1e3
        out[side]["request_to_tool_samples"] = len(e2e)
    out["added_request_to_tool_ms"] = {
        "p50": out["on"]["request_to_tool_p50_ms"] - out["off"]["request_to_tool_p50_ms"],
        "p99": out["on"]["request_to_tool_p99_ms"] - out["off"]["request_to_tool_p99_ms"]}
    return out


def table(r: dict[str, Any]) -> str:
    lines = [f"{r['runs']} runs x {r['calls']} tool calls per side and round, {r['rounds']} rounds, "
             f"{r['workers']} solo workers",
             f"{'':34} {'effects/s':>10} {'dispatch p50 ms':>16} {'dispatch p99 ms':>16}", "-" * 80]
    for side, name in (("off", "flow control off (no rule)"), ("on", "flow control on (3 rules)")):
        s = r[side]
        lines.append(f"{name:34} {s['effects_per_s']:10.0f} {s['dispatch_p50_ms']:16.2f} {s['dispatch_p99_ms']:16.2f}")
    rounds = ", ".join(f"{x:.2f}" for x in r["ratio_on_off"]["rounds"])
    lines.append(f"on / off effects/s: median {r['ratio_on_off']['median']:.2f}x (rounds: {rounds}; target >= 0.9x)")
    lines.append(f"added dispatch latency: p50 {r['added_dispatch_ms']['p50']:.2f} ms, "
                 f"p99 {r['added_dispatch_ms']['p99']:.2f} ms (target: p99 <= 2 ms)")
    for side, name in (("off", "off"), ("on", "on")):
        s = r[side]
        lines.append(f"request -> tool start, {name}: p50 {s['request_to_tool_p50_ms']:.2f} ms, "
                     f"p99 {s['request_to_tool_p99_ms']:.2f} ms ({s['request_to_tool_samples']} calls)")
    added = r["added_request_to_tool_ms"]
    lines.append(f"added request -> tool start (the tick's admission, the broker, the task's): "
                 f"p50 {added['p50']:.2f} ms, p99 {added['p99']:.2f} ms")
    lines.append(f"client side, acquire + release of the 3 rules: p50 {r['client_acquire_release_ms']['p50']:.3f} ms, "
                 f"p99 {r['client_acquire_release_ms']['p99']:.3f} ms")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per side and round")
    parser.add_argument("--calls", type=int, default=25, help="tool calls per run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (each: both sides)")
    parser.add_argument("--workers", type=int, default=2, help="solo worker processes")
    parser.add_argument("--aa", action="store_true", help="no rule on either side (an A/A run: the bench's own bias)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flow-bench-") as tmp, RedisServer(Path(tmp) / "redis") as server:
        log(f"redis-server {server.binary} on port {server.port}")
        results = measure(server, Path(tmp) / "group", args)
    print(json.dumps(results, indent=2) if args.json else table(results))


if __name__ == "__main__":
    main()
