"""``explain`` benchmark: latency and Redis commands of one explanation on a big store.

A script, not a test. Run it from the repository root::

    .venv/bin/python tests/bench/explain.py [--runs 100000] [--small 1000] [--samples 200] [--json]

It starts its own redis-server on a free port (``tests/support/redis_server.py``; no AOF),
the runs in database 0 and the broker in database 1, and writes two stores under two key
prefixes: a small one (``--small`` runs) and a big one (``--runs`` runs). Runs are written
with ``RedisBackend.commit``, their script calls sent in pipelines (``bench_fill.py``): run
hashes, ledgers (two tool calls and the step that left the run where it is), results and
index entries as commits write them, in a mix of kinds (:data:`WEIGHTS`): completed, failed
(with a kept traceback), cancelled, running with a live lease (tick or effect), an effect in
its retry backoff, an expired lease, waiting for a person, an event (100 runs per key), a
timer, a job, a child (which waits for a person). One fake worker heartbeat consumes every
queue and a sweep ran, so a running run is ``MOVING``, as on a healthy deployment.

Then, on each store, for ``--samples`` runs of each kind (shuffled together):
``workers.fleet.explain_run(backend, settings, run_id, broker=probe)`` with one
``BrokerProbe`` kept open (as a console or the detector would), timed one by one:
p50/p99/max latency per kind and overall; the Redis commands one explanation costs (``INFO
commandstats`` delta over the loop, store and broker); and whether the code is the expected
one. Also ``Client.explain`` (what the CLI calls: a new broker connection per call) on 100
running runs of the big store, beside ``explain_run`` with the kept probe on the same runs.
Baseline in the same run: the small store, and a bare ``HGETALL`` of a run hash (one round
trip) on the big store. Target (issue 13): p99 <= 20 ms with 100k runs stored, <= 15 commands.

Progress goes to stderr, the table (or JSON) to stdout.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent), str(HERE)]

from bench_fill import EXPECTED, fill, log, split  # noqa: E402
from benchlib import pct  # noqa: E402

from support.redis_server import RedisServer  # noqa: E402

#: Share of each kind of run in a store (weights).
WEIGHTS = {"completed": 40, "failed": 5, "cancelled": 2, "tick": 4, "effect": 4, "retry": 1, "expired": 1,
           "user": 12, "event": 12, "until": 10, "job": 4, "child": 5}
#: Milliseconds: the issue's target for the p99 of one explanation with 100k runs stored.
TARGET_P99_MS = 20.0
#: Commands of the benchmark's own bookkeeping, left out of the commandstats deltas.
#: (A new connection's handshake is left out too: the probe and the client keep theirs open.)
_BOOKKEEPING = {"info", "client|setinfo", "hello"}
#: Heartbeat of the fake worker (it must look alive throughout: ``ALIVE_WITHIN_S``).
_WORKER = "worker:bench@localhost:1"


def calls(r: Any) -> dict[str, int]:
    out = {}
    for key, value in r.info("commandstats").items():
        name = key.removeprefix("cmdstat_")
        if name not in _BOOKKEEPING:
            out[name] = int(value["calls"])
    return out


def delta(before: dict[str, int], after: dict[str, int], n: int) -> dict[str, float]:
    d = {k: (v - before.get(k, 0)) / n for k, v in after.items()}
    return {k: v for k, v in sorted(d.items()) if v >= 0.005}


class Store:
    """One deployment (key prefix) on the benchmark's server, with its client and broker probe."""

    def __init__(self, server: RedisServer, prefix: str) -> None:
        from workers.client import Client
        from workers.fleet import BrokerProbe
        from workers.settings import WorkerSettings

        base = server.url.rsplit("/", 1)[0]
        self.settings = WorkerSettings.from_env({
            "ABSTRACTRUNTIME_REDIS_URL": f"{base}/0", "ABSTRACTRUNTIME_REDIS_PREFIX": prefix,
            "ABSTRACTRUNTIME_BROKER_URL": f"{base}/1"})
        self.client = Client(self.settings)
        self.backend = self.client.backend
        self.probe = BrokerProbe(self.client.app, self.settings)
        self.ids: dict[str, list[str]] = {}

    def fill(self, total: int) -> None:
        self.ids = fill(self.backend, split(total, WEIGHTS), total)

    def alive(self) -> None:
        """A worker consuming every queue beats, and a sweep ran: a healthy deployment."""
        queues = list(self.settings.queues)
        self.backend.write_heartbeat(_WORKER, {"kind": "worker", "hostname": "bench@localhost", "pid": 1,
                                               "queues": queues}, ttl_ms=3_600_000)
        self.backend.mark_sweep(self.backend.time_ms())

    def close(self) -> None:
        self.probe.close()
        self.client.close()


def measure(store: Store, samples: int, rng: random.Random) -> dict[str, Any]:
    from workers.fleet import explain_run

    picks = [(kind, rid) for kind, ids in store.ids.items() for rid in rng.sample(ids, min(samples, len(ids)))]
    rng.shuffle(picks)
    store.alive()
    for _kind, rid in picks[:50]:  # warm-up: connections, scripts, the interpreter's caches
        explain_run(store.backend, store.settings, rid, broker=store.probe)
    lat: dict[str, list[float]] = {}
    wrong: dict[str, list[str]] = {}
    r = store.backend.client
    secs = 0.0
    before = calls(r)
    for n, (kind, rid) in enumerate(picks):
        if n % 200 == 0:
            store.alive()  # outside the timing; two commands, taken out of the counts below
        t0 = time.perf_counter()
        d = explain_run(store.backend, store.settings, rid, broker=store.probe)
        dt = time.perf_counter() - t0
        secs += dt
        lat.setdefault(kind, []).append(dt * 1e3)
        if d.code.value != EXPECTED[kind]:
            wrong.setdefault(kind, []).append(d.code.value)
    after = calls(r)
    beats = (len(picks) + 199) // 200
    for name in ("zadd", "set", "zremrangebyscore"):  # the heartbeats and sweep marks of alive()
        after[name] = after.get(name, 0) - beats * (2 if name == "set" else 1)
    per = delta(before, after, len(picks))
    every = [x for xs in lat.values() for x in xs]
    return {"explains": len(picks), "p50_ms": pct(every, .5), "p99_ms": pct(every, .99), "max_ms": max(every),
            "per_s": len(picks) / secs, "commands": per, "commands_total": sum(per.values()),
            "kinds": {k: {"n": len(v), "p50_ms": pct(v, .5), "p99_ms": pct(v, .99), "max_ms": max(v),
                          "expected": EXPECTED[k], "wrong": sorted(set(wrong.get(k, [])))}
                      for k, v in sorted(lat.items())}}


def commands_by_kind(store: Store, rng: random.Random) -> dict[str, float]:
    """Commands of one explanation of each kind (20 runs each)."""
    from workers.fleet import explain_run

    r = store.backend.client
    out = {}
    store.alive()
    for kind, ids in sorted(store.ids.items()):
        picks = rng.sample(ids, min(20, len(ids)))
        before = calls(r)
        for rid in picks:
            explain_run(store.backend, store.settings, rid, broker=store.probe)
        out[kind] = sum(delta(before, calls(r), len(picks)).values())
    return out


#: The kinds whose explanation asks the broker (a running run: its queue's depth).
RUNNING = ("tick", "effect", "retry", "expired")


def client_explain(store: Store, rng: random.Random, n: int = 100) -> dict[str, float]:
    """``Client.explain`` (a new broker connection per call, as the CLI) on running runs."""
    from workers.fleet import explain_run

    every = [rid for kind in RUNNING for rid in store.ids.get(kind, ())]
    picks = rng.sample(every, min(n, len(every)))
    store.alive()
    lat = []
    for rid in picks:
        t0 = time.perf_counter()
        store.client.explain(rid)
        lat.append((time.perf_counter() - t0) * 1e3)
    kept = []
    for rid in picks:
        t0 = time.perf_counter()
        explain_run(store.backend, store.settings, rid, broker=store.probe)
        kept.append((time.perf_counter() - t0) * 1e3)
    return {"n": len(picks), "p50_ms": pct(lat, .5), "p99_ms": pct(lat, .99), "max_ms": max(lat),
            "kept_p50_ms": pct(kept, .5), "kept_p99_ms": pct(kept, .99)}


def bare_hgetall(store: Store, rng: random.Random, n: int = 2000) -> dict[str, float]:
    r, k = store.backend.client, store.backend.keys
    every = [rid for ids in store.ids.values() for rid in ids]
    picks = [k.run(rid) for rid in rng.choices(every, k=n)]
    for key in picks[:100]:
        r.hgetall(key)
    lat = []
    for key in picks:
        t0 = time.perf_counter()
        r.hgetall(key)
        lat.append((time.perf_counter() - t0) * 1e3)
    return {"n": n, "p50_ms": pct(lat, .5), "p99_ms": pct(lat, .99), "max_ms": max(lat)}


def table(out: dict[str, Any]) -> str:
    small, big = out["small"], out["big"]
    lines = [f"explain benchmark: {out['runs_big']:,} runs stored (big) vs {out['runs_small']:,} (small); "
             f"{out['samples']} samples per kind; one redis-server (no AOF), broker in db 1", ""]
    lines.append(f"{'':44}{'small store':>20}{'big store':>20}")

    def row(label: str, fn: Any) -> None:
        lines.append(f"{label:44}{fn(small):>20}{fn(big):>20}")

    row("runs stored (idx:updated)", lambda m: f"{m['stored']:,}")
    row("explains timed", lambda m: f"{m['explains']:,}")
    row("explain_run p50 / p99 (ms)", lambda m: f"{m['p50_ms']:.2f} / {m['p99_ms']:.2f}")
    row("explain_run max (ms)", lambda m: f"{m['max_ms']:.2f}")
    row("explain_run per second, one client", lambda m: f"{m['per_s']:,.0f}")
    row("Redis commands per explain (sample mean)", lambda m: f"{m['commands_total']:.2f}")
    row("Redis commands, worst kind (mean of 20)", lambda m: f"{max(m['by_kind'].values()):.2f}")
    row("codes not the expected one", lambda m: str(sum(1 for k in m['kinds'].values() if k['wrong'])))
    b, c = out["hgetall"], out["client_explain"]
    lines.append(f"{'bare HGETALL of a run hash, p50 / p99 (ms)':44}{'':>20}"
                 f"{b['p50_ms']:.2f} / {b['p99_ms']:.2f}".rjust(20))
    lines.append(f"{'  explain_run p50 / bare HGETALL p50':44}{'':>20}{big['p50_ms'] / b['p50_ms']:>19.1f}x")
    lines.append(f"{'running runs: explain_run p50 / p99 (ms)':44}{'':>20}"
                 f"{c['kept_p50_ms']:.2f} / {c['kept_p99_ms']:.2f}".rjust(20))
    lines.append(f"{'  Client.explain (new broker conn.) p50/p99':44}{'':>20}"
                 f"{c['p50_ms']:.2f} / {c['p99_ms']:.2f}".rjust(20))
    verdict = "met" if big["p99_ms"] <= TARGET_P99_MS else "NOT met"
    lines.append(f"{'target: p99 <= 20 ms on the big store':44}{'':>20}{verdict:>20}")
    lines += ["", f"{'per kind, big store':16}{'code':>16}{'n':>6}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
              f"{'cmds':>7}  wrong codes"]
    for kind, m in big["kinds"].items():
        lines.append(f"{kind:16}{m['expected']:>16}{m['n']:>6}{m['p50_ms']:>9.2f}{m['p99_ms']:>9.2f}"
                     f"{m['max_ms']:>9.2f}{big['by_kind'][kind]:>7.1f}  {', '.join(m['wrong']) or '-'}")
    lines.append("")
    lines.append("Redis commands per explain, big store: "
                 + ", ".join(f"{k} {v:.2f}" for k, v in big["commands"].items()))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100_000, help="runs in the big store")
    parser.add_argument("--small", type=int, default=1_000, help="runs in the small store (the baseline)")
    parser.add_argument("--samples", type=int, default=200, help="explanations timed per kind of run")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    out: dict[str, Any] = {"runs_big": args.runs, "runs_small": args.small, "samples": args.samples}
    with tempfile.TemporaryDirectory(prefix="explain-bench-") as tmp, RedisServer(Path(tmp) / "redis") as server:
        small, big = Store(server, "small"), Store(server, "big")
        try:
            log(f"writing the small store: {args.small:,} runs")
            small.fill(args.small)
            log(f"writing the big store: {args.runs:,} runs")
            big.fill(args.runs)
            for name, store in (("small", small), ("big", big)):
                log(f"timing explain on the {name} store")
                m = measure(store, args.samples, rng)
                m["by_kind"] = commands_by_kind(store, rng)
                m["stored"] = int(store.backend.client.zcard(store.backend.keys.by_updated()))
                out[name] = m
            log("timing Client.explain and a bare HGETALL on the big store")
            out["client_explain"] = client_explain(big, rng)
            out["hgetall"] = bare_hgetall(big, rng)
            out["used_memory_mb"] = int(big.backend.client.info("memory")["used_memory"]) / 2**20
        finally:
            small.close()
            big.close()
    print(json.dumps(out, indent=2) if args.json else table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
