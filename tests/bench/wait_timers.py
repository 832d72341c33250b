"""Named waits benchmark (issue 15): listing open waits, and how late their timers fire.

A script, not a test. Run it from the repository root::

    .venv/bin/python tests/bench/wait_timers.py [--waits 100000] [--runs 50] [--json]

It starts its own redis-server on a free port (no AOF). Three parts:

1. **Listing.** ``--waits`` open named waits are written (run hashes and their index entries,
   pipelined, as ``RedisBackend.put_wait_entries`` writes them), spread over 1,000 assignees,
   plus 500 for the assignee ``target``. Timed: ``list_open_waits(assignee="target",
   limit=50)`` (a page of 50 of target's waits, soonest deadline first, each read from its
   run's state) and ``list_open_waits(overdue=True, limit=50)``; p50/p99 over 300 calls.
   Baseline in the same run: the least such a page can cost, a ``ZRANGE`` of 50 members and
   one pipelined ``HGET`` of their 50 run states, decoded.
2. **Timers by countdown**, on a real Celery worker (solo) and beat: ``--runs`` runs each open
   one wait with reminders at 1, 2 and 3 s and a deadline at 4 s (default answer); lateness is
   the ``late_ms`` each fire records (the Redis clock at the fire minus the timer's due time).
   The runs start over ``--spread`` s (5; 0 puts every timer at the same instants, and then the
   one worker's queue is what is measured).
   Baseline in the same run, on the same worker: ``--runs`` ``WAIT_UNTIL`` runs due in 2 s,
   their lateness being the commit that completes them minus their due time (an upper bound:
   it includes running their last node).
3. **Timers by sweep**, in process (``workers.testing`` stub dispatcher): the countdown wakes
   are dropped, and ``Engine.sweep()`` runs every ``--period`` s in real time, as beat sends it;
   lateness as above. Baseline: the sweep period (a timer cannot be seen before the next sweep).

Progress goes to stderr, the table (or JSON) to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent), str(HERE)]

from benchlib import log, pct  # noqa: E402

from runtime import Effect, EffectType, RunState, RunStatus  # noqa: E402
from runtime.waitset import open_set  # noqa: E402
from stores.redis import RedisBackend  # noqa: E402
from stores.redis.codec import decode_state, encode  # noqa: E402

from support.redis_server import RedisServer  # noqa: E402

TIMED = {"name": "timed", "prompt": "Still there?", "reminders": ["1s", "2s", "3s"], "deadline": "4s",
         "on_timeout": {"answer": "no"}, "assignees": ["ops"]}


def fill(backend: RedisBackend, n: int, now_ms: int) -> None:
    """``n`` waiting runs, one open wait each, and 500 more for ``target``; written pipelined."""
    client, k = backend.client, backend.keys
    pipe = client.pipeline(transaction=False)
    total = n + 500
    for i in range(total):
        rid = f"bench-{i}"
        run = RunState.new(workflow_id="bench_waits", entry_node="ask", run_id=rid)
        who = "target" if i >= n else f"user-{i % 1000}"
        # deadlines from an hour ago (overdue) to a day ahead
        deadline = datetime.fromtimestamp((now_ms + (i * 7919 % 90_000_000) - 3_600_000) / 1000, tz=timezone.utc)
        effect = Effect(EffectType.OPEN_WAITS, {"waits": [{"name": "q", "prompt": f"question {i}",
                                                          "schema": {"type": "boolean"}, "assignees": [who],
                                                          "deadline": deadline.isoformat()}]}, result_key="a")
        run.status, run.waiting = RunStatus.WAITING, open_set(run, effect, "done", now_ms)
        pipe.hset(k.run(rid), mapping={"s": encode(run.to_dict(), what="run", limit=backend.max_value_bytes), "v": 1})
        for key, member, score in backend.wait_entries(run):
            if score is None:
                pipe.sadd(key, member)
            else:
                pipe.zadd(key, {member: score})
        if i % 2000 == 1999:
            pipe.execute()
            log(f"  {i + 1}/{total} waits written")
    pipe.execute()


def timed(fn: Any, calls: int) -> dict[str, float]:
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": round(pct(samples, 0.5), 3), "p99_ms": round(pct(samples, 0.99), 3),
            "max_ms": round(max(samples), 3)}


def listing(server: RedisServer, n: int) -> dict[str, Any]:
    backend = RedisBackend(server.client(), prefix="list")
    now = backend.time_ms()
    log(f"listing: writing {n} + 500 open waits")
    fill(backend, n, now)
    k, client = backend.keys, backend.client
    page = backend.list_open_waits(assignee="target", limit=50)
    assert len(page) == 50 and all("target" in w["assignees"] for w in page), page[:2]

    def bare() -> None:
        members = client.zrange(k.waits_of("target"), 0, 49)
        pipe = client.pipeline(transaction=False)
        ids = [m.decode().split(" ", 1)[0] for m in members]
        for rid in ids:
            pipe.hget(k.run(rid), "s")
        for rid, raw in zip(ids, pipe.execute()):
            decode_state(raw, key=k.run(rid), run_id=rid, limit=backend.max_value_bytes)

    log("listing: timing")
    return {
        "waits": n + 500,
        "assignee_page": timed(lambda: backend.list_open_waits(assignee="target", limit=50), 300),
        "overdue_page": timed(lambda: backend.list_open_waits(overdue=True, limit=50), 300),
        "baseline_zrange_hget": timed(bare, 300),
    }


def late_ms(client: Any, run_ids: list[str]) -> list[float]:
    out = []
    for rid in run_ids:
        for r in client.get_ledger(rid):
            if (r["effect"] or {}).get("type") in ("wait_reminder", "wait_expired", "wait_escalated"):
                out.append(float(r["result"]["late_ms"]))
    return out


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50_ms": pct(values, 0.5), "p99_ms": pct(values, 0.99), "max_ms": max(values),
            "early": sum(1 for v in values if v < 0)}


def by_countdown(server: RedisServer, runs: int, tmp: Path, spread: float) -> dict[str, Any]:
    from support.celery_workers import WorkerGroup

    group = WorkerGroup(server.url, tmp / "workers", imports="support.celery_scenarios,support.wait_scenarios")
    try:
        group.start_worker("w1")
        group.start_beat()
        client = group.client()
        log(f"countdown: {runs} runs x 4 timers, and {runs} WAIT_UNTIL runs")
        ids, sleepers, dues = [], [], {}
        for _ in range(runs):  # started over ``spread`` s, so that the timers do not all fall due at once
            ids.append(client.start("named_waits", vars={"waits": [TIMED]}))
            due = datetime.now(timezone.utc) + timedelta(seconds=2)
            sleepers.append(client.start("sleep_until", vars={"until": due.isoformat()}))
            dues[sleepers[-1]] = due
            time.sleep(spread / runs)
        for rid in ids + sleepers:
            client.wait_for(rid, ["completed", "failed"], timeout=60)
        ours = late_ms(client, ids)
        base = [(datetime.fromisoformat(client.get_state(r).updated_at) - dues[r]).total_seconds() * 1000
                for r in sleepers]
        return {"ours": summary(ours), "baseline_wait_until": summary(base)}
    finally:
        group.close()


def by_sweep(server: RedisServer, runs: int, period: float) -> dict[str, Any]:
    from workers.registry import registry
    from workers.settings import WorkerSettings
    from workers.testing import make_stub_engine

    import support.wait_scenarios  # noqa: F401

    backend = RedisBackend(server.client(), prefix="sweep")
    engine, stub = make_stub_engine(backend, registry, WorkerSettings(timer_hold_s=30))
    log(f"sweep: {runs} runs x 4 timers, sweep every {period} s, countdown wakes dropped")
    spec = registry.workflows.get_or_raise("named_waits")
    ids = []
    for _ in range(runs):  # opened over one period, so that due times fall anywhere between two sweeps
        ids.append(engine.create(spec, vars={"waits": [TIMED]}))
        stub.run_until_quiet(engine)
        time.sleep(period / runs)

    def drop_wakes() -> None:
        for m in list(stub.pending):
            if m.kind == "wake":
                stub.drop(m)

    drop_wakes()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        engine.sweep()
        stub.wake_due(engine)  # the wakes the sweep sent (the others were dropped)
        stub.run_until_quiet(engine)
        drop_wakes()
        if all(backend.runs.load(r).status == RunStatus.COMPLETED for r in ids):
            break
        time.sleep(max(0.0, period - (time.monotonic() - t0)))

    class _C:
        def get_ledger(self, rid: str) -> list[dict[str, Any]]:
            return backend.ledger.list(rid)

    return {"ours": summary(late_ms(_C(), ids)), "baseline_period_ms": period * 1000}


def table(out: dict[str, Any]) -> str:
    lst = out["listing"]
    lines = [f"listing, {lst['waits']} open waits      p50 ms    p99 ms    max ms",
             *(f"  {name:<28}{v['p50_ms']:>8}  {v['p99_ms']:>8}  {v['max_ms']:>8}"
               for name, v in (("assignee page of 50", lst["assignee_page"]),
                               ("overdue page of 50", lst["overdue_page"]),
                               ("baseline ZRANGE + HGETs", lst["baseline_zrange_hget"]))),
             f"  ratio assignee page / baseline (p50): "
             f"{lst['assignee_page']['p50_ms'] / lst['baseline_zrange_hget']['p50_ms']:.2f}x", ""]
    for part in ("countdown", "sweep"):
        if part not in out:
            continue
        o = out[part]["ours"]
        lines.append(f"timer lateness by {part:<10} n={o['n']}  p50 {o['p50_ms']:.1f} ms  p99 {o['p99_ms']:.1f} ms  "
                     f"max {o['max_ms']:.1f} ms  early {o['early']}")
        if part == "countdown":
            b = out[part]["baseline_wait_until"]
            lines.append(f"  baseline WAIT_UNTIL (wake + last node)  p50 {b['p50_ms']:.1f} ms  "
                         f"p99 {b['p99_ms']:.1f} ms")
        else:
            lines.append(f"  baseline: the sweep period, {out[part]['baseline_period_ms']:.0f} ms")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--waits", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--period", type=float, default=1.0)
    parser.add_argument("--spread", type=float, default=5.0,
                        help="seconds over which the countdown part starts its runs (0: all timers at once)")
    parser.add_argument("--skip-workers", action="store_true", help="leave out part 2 (real workers)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp)) as server:
        out: dict[str, Any] = {"listing": listing(server, args.waits)}
        if not args.skip_workers:
            out["countdown"] = by_countdown(server, args.runs, Path(tmp), args.spread)
        out["sweep"] = by_sweep(server, args.runs, args.period)
    print(json.dumps(out, indent=2) if args.json else table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
