"""Sweep benchmark: the cost of one ``Engine.sweep()`` with 10k to 1M waiting runs stored.

A script, not a test. Run it from the repository root::

    .venv/bin/python tests/bench/sweep.py [--sizes 10000,100000] [--sweeps 20] [--age 0] [--catch-up 2000]
        [--json]

``--sizes 10000,100000,1000000`` adds the million (about 1.5 GB of Redis memory and a few
minutes of writing). It starts its own redis-server on a free port
(``tests/support/redis_server.py``; no AOF). For each size W, after a ``FLUSHALL``, it writes
W waiting runs (:data:`WEIGHTS`: waiting for a person, an event shared by 100 runs, a timer
an hour or more ahead, a job) with ``RedisBackend.commit``, its script calls sent in
pipelines (``bench_fill.py``): the run hash and every index entry as a commit writes them,
no ledger; their last commit is dated now, or spread over the last ``--age`` seconds (as if
made then: with ``--age 3600`` the timer runs are past the detector's 60 s window at once,
and the busy sweeps below show up at every size). Then it builds an engine as
``workers/testing.py``'s ``make_stub_engine`` does (default ``WorkerSettings``, an empty
registry, a stub dispatcher) and calls ``engine.sweep()``, whatever the sweep does today
(leases, timers, the stuck-run detector), one call at a time, each timed and its Redis
commands counted (``INFO commandstats`` deltas):

1. right after the writing: ``--sweeps`` sweeps. The detector reads the runs of each index
   whose last commit crossed the smallest threshold of that index since the last sweep (the
   timer runs written more than 60 s ago) and looks at up to ``sweep_batch`` of them per
   sweep: "busy" sweeps, bounded by the batch, not by W;
2. catch-up: sweeps, untimed one by one, until one looks at no run (at most ``--catch-up``);
3. idle: ``--sweeps`` sweeps with nothing due: the cost that must stay flat as W grows,
   index reads only (``HMGET`` of run hashes per idle sweep is printed: it should be 0).

Baseline in the same run: the same with 0 runs stored, first and again last (drift); ratios
are to the better of the two.
Target (issue 13): the sweep's cost flat from 10k to 1M waiting runs.

Progress goes to stderr, the table (or JSON) to stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent), str(HERE)]

from bench_fill import fill, log, split  # noqa: E402

from support.redis_server import RedisServer  # noqa: E402

#: Share of each wait reason among the waiting runs (weights).
WEIGHTS = {"user": 4, "event": 3, "until": 2, "job": 1}
#: Commands of the benchmark's own bookkeeping, left out of the commandstats deltas.
_BOOKKEEPING = {"info", "flushall", "client|setinfo", "hello"}


def calls(r: Any) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in r.info("commandstats").items()
            if k.removeprefix("cmdstat_") not in _BOOKKEEPING}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v - before.get(k, 0)}


def one_sweep(engine: Any, r: Any) -> dict[str, Any]:
    before = calls(r)
    t0 = time.perf_counter()
    counts = engine.sweep()
    ms = (time.perf_counter() - t0) * 1e3
    cmds = delta(before, calls(r))
    return {"ms": ms, "commands": cmds, "n_commands": sum(cmds.values()), "counts": counts}


def busy(s: dict[str, Any]) -> bool:
    c = s["counts"]
    return bool(c.get("stuck_looked") or c.get("leases") or c.get("timers"))


def summary(sweeps: list[dict[str, Any]]) -> dict[str, Any]:
    ms = [s["ms"] for s in sweeps]
    per: dict[str, list[int]] = {}
    for s in sweeps:
        for k, v in s["commands"].items():
            per.setdefault(k, []).append(v)
    return {"n": len(sweeps), "p50_ms": statistics.median(ms), "max_ms": max(ms),
            "commands": statistics.median(s["n_commands"] for s in sweeps),
            "breakdown": {k: sum(v) / len(sweeps) for k, v in sorted(per.items())},
            "looked": sum(s["counts"].get("stuck_looked", 0) for s in sweeps) / len(sweeps)}


def measure(server: RedisServer, waiting: int, args: argparse.Namespace) -> dict[str, Any]:
    from stores.redis import RedisBackend
    from workers.registry import Registry
    from workers.settings import WorkerSettings
    from workers.testing import make_stub_engine

    r = server.client(socket_timeout=600)
    r.flushall()
    backend = RedisBackend(server.client(socket_timeout=600), prefix="ar")
    out: dict[str, Any] = {"waiting": waiting}
    t0 = time.monotonic()
    if waiting:
        fill(backend, split(waiting, WEIGHTS), waiting, what="waiting runs", history=0, ledger=False,
             age_s=args.age)
    out["fill_s"] = time.monotonic() - t0
    out["stored"] = int(r.zcard(backend.keys.by_status("waiting")))
    out["used_memory_mb"] = int(r.info("memory")["used_memory"]) / 2**20
    engine, _stub = make_stub_engine(backend, Registry(), WorkerSettings())
    log(f"[{waiting:,}] {args.sweeps} sweeps right after the writing")
    first = [one_sweep(engine, r) for _ in range(args.sweeps)]
    out["first"] = first[0]
    out["after_fill"] = summary(first)
    out["after_fill_busy"] = sum(1 for s in first if busy(s))
    t0 = time.monotonic()
    n = 0
    if busy(first[-1]):
        log(f"[{waiting:,}] catching up (sweeps until one looks at no run, at most {args.catch_up})")
        while n < args.catch_up:
            n += 1
            if not busy(one_sweep(engine, r)):
                break
    out["catch_up"] = {"sweeps": n, "seconds": time.monotonic() - t0}
    log(f"[{waiting:,}] {args.sweeps} idle sweeps")
    idle = [one_sweep(engine, r) for _ in range(args.sweeps)]
    out["idle"] = summary(idle)
    out["idle_busy"] = sum(1 for s in idle if busy(s))
    return out


def table(results: list[dict[str, Any]], sweep_batch: int) -> str:
    # The better of the two W = 0 measurements (the first one often pays for a cold process).
    base = min(results[0]["idle"]["p50_ms"], results[-1]["idle"]["p50_ms"])
    lines = [f"sweep benchmark: one engine.sweep() (stub dispatcher, default settings, sweep_batch {sweep_batch}); "
             "one redis-server (no AOF)", ""]
    head = "".join(f"{('W = ' + format(r['waiting'], ',')) + (' (after)' if i and not r['waiting'] else ''):>17}"
                   for i, r in enumerate(results))
    lines.append(f"{'':46}{head}")

    def row(label: str, fn: Any) -> None:
        lines.append(f"{label:46}" + "".join(f"{fn(r):>17}" for r in results))

    row("waiting runs stored", lambda r: f"{r['stored']:,}")
    row("writing them (s)", lambda r: f"{r['fill_s']:.1f}")
    row("Redis used memory (MB)", lambda r: f"{r['used_memory_mb']:,.0f}")
    row("first sweep: ms / commands", lambda r: f"{r['first']['ms']:.1f} / {r['first']['n_commands']}")
    row("  runs the detector looked at", lambda r: f"{r['first']['counts'].get('stuck_looked', 0):,}")
    row("sweeps after writing: p50 / max ms", lambda r: f"{r['after_fill']['p50_ms']:.1f} / "
        f"{r['after_fill']['max_ms']:.1f}")
    row("  busy ones (looked at runs) / all", lambda r: f"{r['after_fill_busy']} / {r['after_fill']['n']}")
    row("  runs looked at per sweep (mean)", lambda r: f"{r['after_fill']['looked']:,.0f}")
    row("catch-up: sweeps / s", lambda r: f"{r['catch_up']['sweeps']} / {r['catch_up']['seconds']:.1f}")
    row("idle sweep: p50 / max ms", lambda r: f"{r['idle']['p50_ms']:.2f} / {r['idle']['max_ms']:.2f}")
    row("  p50 / baseline W = 0 (the better one)", lambda r: f"{r['idle']['p50_ms'] / base:.2f}x")
    row("  Redis commands per idle sweep (median)", lambda r: f"{r['idle']['commands']:.0f}")
    row("  HMGET (run hash reads) per idle sweep", lambda r: f"{r['idle']['breakdown'].get('hmget', 0):.1f}")
    row("  busy idle sweeps (should be 0)", lambda r: str(r["idle_busy"]))
    lines.append("")
    for r in results:
        lines.append(f"commands per idle sweep, W = {r['waiting']:,}: "
                     + ", ".join(f"{k} {v:.1f}" for k, v in r["idle"]["breakdown"].items()))
    busy_rows = [r for r in results if r["after_fill_busy"]]
    for r in busy_rows:
        lines.append(f"commands per sweep after writing, W = {r['waiting']:,}: "
                     + ", ".join(f"{k} {v:.1f}" for k, v in r["after_fill"]["breakdown"].items()))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="waiting runs per measurement, comma-separated "
                        "(add 1000000 for the million)")
    parser.add_argument("--sweeps", type=int, default=20, help="sweeps timed after the writing, and idle")
    parser.add_argument("--catch-up", type=int, default=2000, help="most sweeps to wait for the detector to "
                        "catch up before the idle ones")
    parser.add_argument("--age", type=float, default=0.0, help="date the runs' last commit up to this many "
                        "seconds back (0: now)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = [int(x.replace("_", "")) for x in args.sizes.split(",") if x.strip()]
    from workers.settings import WorkerSettings

    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp, RedisServer(Path(tmp) / "redis") as server:
        results = [measure(server, w, args) for w in [0, *sizes, 0]]
    print(json.dumps(results, indent=2, default=str) if args.json else table(results, WorkerSettings().sweep_batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
