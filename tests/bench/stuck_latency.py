"""Stuck-run detection latency: how long after its threshold a run is listed by ``stuck``.

A script, not a test. Run it from the repository root::

    .venv/bin/python tests/bench/stuck_latency.py [--runs 200] [--lease 2] [--period 1] [--threshold 3] [--json]

It starts its own redis-server on a free port (``tests/support/redis_server.py``; no AOF) and
an engine with a stub dispatcher (``workers/testing.py``), whose messages it never delivers,
and calls ``engine.sweep()`` every ``--period`` seconds in real time, as beat does. Two
kinds of run, ``--runs`` of each:

A worker heartbeat says every queue has a consumer (the messages are what is lost).

* waiting for a person (``ask``): listed as ``WAITING_USER`` once it has waited
  ``--threshold`` seconds (``stuck_waiting_user_s``);
* a lost message (``chain``, its first tick never delivered): its lease (``--lease``,
  ``tick_lease_s``) expires, the sweep sends it again (lost again), and it is listed as
  ``LEASE_EXPIRED`` ``--threshold`` seconds after the lease first expired
  (``stuck_lease_expired_s``).

For each run it takes the time from its last commit to its listing, minus the time it was
due to be listed (the threshold; plus the lease for a lost message), by the Redis clock:
the lateness, p50/p99/max. Target (issue 13): listed within one lease plus one sweep period
of the threshold, i.e. a lateness of at most ``--period`` beyond the lease the lost message
waits. Baseline in the same run: the sweep period itself (a run cannot be seen sooner than
the next sweep).

Progress goes to stderr, the table (or JSON) to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent), str(HERE)]

from benchlib import log, pct  # noqa: E402

from support.backends import redis_backend  # noqa: E402
from support.redis_server import RedisServer  # noqa: E402


def measure(server: RedisServer, args: argparse.Namespace) -> dict[str, Any]:
    from runtime._clock import epoch_ms
    from workers.registry import registry
    from workers.settings import WorkerSettings
    from workers.testing import make_stub_engine

    import support.celery_scenarios  # noqa: F401  (registers ask and chain)

    backend = redis_backend(server.client())
    settings = WorkerSettings(tick_lease_s=args.lease, sweep_period_s=args.period, stuck_recheck_s=args.period,
                              stuck_waiting_user_s=args.threshold, stuck_lease_expired_s=args.threshold)
    engine, stub = make_stub_engine(backend, registry, settings)
    # A worker consuming every queue is alive (its messages are what gets lost): a run whose
    # lease expires is then LEASE_EXPIRED, not NO_CONSUMER.
    backend.write_heartbeat("bench-worker", {"kind": "worker", "hostname": "bench@localhost", "pid": 1,
                                             "queues": list(settings.queues)}, ttl_ms=3_600_000)
    asking = [engine.create(registry.workflows.get_or_raise("ask")) for _ in range(args.runs)]
    stub.run_until_quiet(engine)  # they park, waiting for a person
    lost = [engine.create(registry.workflows.get_or_raise("chain")) for _ in range(args.runs)]
    due: dict[str, tuple[str, int]] = {}
    for rid in asking:
        due[rid] = ("WAITING_USER", epoch_ms(backend.runs.load(rid).updated_at) + int(args.threshold * 1000))
    for rid in lost:
        committed = epoch_ms(backend.runs.load(rid).updated_at)
        due[rid] = ("LEASE_EXPIRED", committed + int((args.lease + args.threshold) * 1000))
    log(f"{len(due)} runs; sweeping every {args.period} s")
    listed: dict[str, int] = {}
    sweeps, sweep_ms = 0, []
    deadline = time.monotonic() + args.lease + args.threshold + 10 * args.period + 30
    while len(listed) < len(due) and time.monotonic() < deadline:
        started = time.perf_counter()
        engine.sweep()
        sweep_ms.append((time.perf_counter() - started) * 1000)
        sweeps += 1
        now = backend.time_ms()
        for cause, rows in backend.list_stuck(["WAITING_USER", "LEASE_EXPIRED"], by_ms=now, limit=10 * args.runs
                                              ).items():
            for row in rows:
                rid = row["run_id"]
                if rid in due and rid not in listed and due[rid][0] == cause:
                    listed[rid] = now
        stub._queue.clear()  # every message is lost: nothing is ever delivered
        time.sleep(max(0.0, args.period - (time.perf_counter() - started)))
    out: dict[str, Any] = {"runs": args.runs, "lease_s": args.lease, "period_s": args.period,
                           "threshold_s": args.threshold, "sweeps": sweeps,
                           "sweep_ms_p50": pct(sweep_ms, 0.5), "sweep_ms_max": max(sweep_ms)}
    for cause in ("WAITING_USER", "LEASE_EXPIRED"):
        late = [(listed[rid] - at) / 1000 for rid, (c, at) in due.items() if c == cause and rid in listed]
        missing = sum(1 for rid, (c, _at) in due.items() if c == cause and rid not in listed)
        out[cause] = {"listed": len(late), "missing": missing, "early": sum(1 for x in late if x < 0),
                      "p50_s": pct(late, 0.5) if late else None, "p99_s": pct(late, 0.99) if late else None,
                      "max_s": max(late) if late else None}
    return out


def table(out: dict[str, Any]) -> str:
    lines = [f"stuck detection: {out['runs']} runs per cause; lease {out['lease_s']} s, sweep every "
             f"{out['period_s']} s, thresholds {out['threshold_s']} s; one redis-server (no AOF)", "",
             f"{'':46}{'listed':>8}{'missing':>9}{'early':>7}{'p50 s':>8}{'p99 s':>8}{'max s':>8}"]
    for cause, due in (("WAITING_USER", "threshold"), ("LEASE_EXPIRED", "lease + threshold")):
        m = out[cause]
        if not m["listed"]:
            lines.append(f"{cause + ' lateness after ' + due:46}{0:>8}{m['missing']:>9}")
            continue
        lines.append(f"{cause + ' lateness after ' + due:46}{m['listed']:>8}{m['missing']:>9}{m['early']:>7}"
                     f"{m['p50_s']:>8.2f}{m['p99_s']:>8.2f}{m['max_s']:>8.2f}")
    lines += ["", f"baseline: one sweep period = {out['period_s']:.2f} s (target: max lateness within it); "
              f"{out['sweeps']} sweeps, p50 {out['sweep_ms_p50']:.1f} ms, max {out['sweep_ms_max']:.1f} ms"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--period", type=float, default=1.0)
    parser.add_argument("--threshold", type=float, default=3.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp)) as server:
        out = measure(server, args)
    print(json.dumps(out, indent=2) if args.json else table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
