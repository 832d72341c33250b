"""Flow-control admission benchmark: Redis CPU per admission and per release, and round trips.

A script, not a test. Run it from the repository root::

    .venv/bin/python tests/bench/admission.py [--calls 20000] [--json]

It starts its own redis-server on a free port (``tests/support/redis_server.py``, no AOF), and
measures ``stores.redis.admission.Admission`` on the Redis clock (no test clock: the scripts
call ``TIME`` and set key expiries, as in production), one client connection:

* ``acquire`` on a key path of 3 levels (``tenant:acme``, ``user:u-7``, ``agent:support``) x 3
  rule types (concurrency, rate, tokens with a reservation): 9 rules, 27 keys, one script
  call; and the same limits as 3 rules of 3 types each. The limits never block (the point is
  the cost of a full check and take); holders accumulate (``--calls`` of them: the slot and
  holder sorted sets grow to that size), then
* ``release`` of each (the held set is read first, then one script call).

Redis CPU per call is ``usec_per_call`` of ``cmdstat_evalsha`` from ``INFO commandstats``
(``CONFIG RESETSTAT`` before each batch of 250 calls; it includes the commands the script runs;
Redis times it by the wall clock, so a busy VM inflates it): the median batch and the best. Round
trips are counted in the client (socket sends) for one call of each. Baseline in the same
run: a bare ``EVALSHA`` of ``return 1``, with no arguments and with the 9 rules' KEYS and ARGV
(what Redis spends making Lua tables of them). Target (issue 14): acquire <= 60 µs and one round trip.

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

from redis.connection import Connection  # noqa: E402

from stores.redis.admission import Admission, rule_argv  # noqa: E402
from stores.redis.flowkeys import FlowKeys, rule_id  # noqa: E402
from workers.flow.rules import LimitRule  # noqa: E402

from support.redis_server import RedisServer  # noqa: E402

KEYS = ("tenant:acme", "user:u-7", "agent:support")
#: Limits that never block: the measure is the cost of checking and taking, not of waiting.
_BIG = {"concurrency": 10**7, "rate": 10.0**8, "burst": 10**7, "tokens": 10**12}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def nine_rules() -> list[tuple[str, LimitRule]]:
    out = []
    for key in KEYS:
        out.append((rule_id(key, "*", "conc"), LimitRule(key=key, name="conc", concurrency=_BIG["concurrency"])))
        out.append((rule_id(key, "*", "rate"), LimitRule(key=key, name="rate", rate=_BIG["rate"],
                                                         burst=_BIG["burst"])))
        out.append((rule_id(key, "*", "tokens"), LimitRule(key=key, name="tokens", tokens=_BIG["tokens"],
                                                           window_s=3600)))
    return out


def three_rules() -> list[tuple[str, LimitRule]]:
    return [(rule_id(key, "*", "limit"), LimitRule(key=key, concurrency=_BIG["concurrency"], rate=_BIG["rate"],
                                                   burst=_BIG["burst"], tokens=_BIG["tokens"], window_s=3600))
            for key in KEYS]


def evalsha_stats(client: Any) -> tuple[int, float]:
    stats = client.info("commandstats").get("cmdstat_evalsha", {"calls": 0, "usec": 0})
    return int(stats["calls"]), float(stats["usec"])


class RoundTrips:
    """Counts socket sends (a pipeline or a script call is one) while active."""

    def __init__(self) -> None:
        self.count = 0
        self._orig = Connection.send_packed_command

    def __enter__(self) -> RoundTrips:
        orig, me = self._orig, self

        def counting(conn: Any, command: Any, check_health: bool = True) -> None:
            me.count += 1
            orig(conn, command, check_health)

        Connection.send_packed_command = counting  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: Any) -> None:
        Connection.send_packed_command = self._orig  # type: ignore[method-assign]


def phase(client: Any, calls: int, fn: Any, batch: int = 250) -> dict[str, float]:
    """Calls in batches (``CONFIG RESETSTAT`` before each): the Redis µs per call of the median batch
    and of the best one (the VM's noise only ever adds), latency percentiles over all calls."""
    lat, per_batch, done = [], [], 0
    t_start = time.perf_counter()
    while done < calls:
        client.config_resetstat()
        for i in range(done, min(calls, done + batch)):
            t0 = time.perf_counter()
            fn(i)
            lat.append(time.perf_counter() - t0)
        n, usec = evalsha_stats(client)
        per_batch.append(usec / max(n, 1))
        done += batch
    wall = time.perf_counter() - t_start
    lat.sort()
    per_batch.sort()
    return {"redis_us_per_call": per_batch[len(per_batch) // 2], "redis_us_best_batch": per_batch[0],
            "calls_per_s": calls / wall, "p50_ms": lat[len(lat) // 2] * 1e3, "p99_ms": lat[int(len(lat) * 0.99)] * 1e3}


def measure(server: RedisServer, args: argparse.Namespace) -> dict[str, Any]:
    client = server.client()
    out: dict[str, Any] = {}
    bare = client.register_script("return 1")
    bare()
    out["baseline: bare EVALSHA (return 1)"] = phase(client, args.calls, lambda i: bare())
    fk = FlowKeys("same-shape")
    keys = [fk.holders(), fk.held("h")] + [k for rid, _r in nine_rules() for k in (fk.slots(rid), fk.rate(rid),
                                                                                   fk.budget(rid))]
    argv = ["h", "600000", "100", "0", ""] + [a for rid, rule in nine_rules() for a in rule_argv(rid, rule)]
    out["baseline: bare EVALSHA, 9 rules' KEYS/ARGV"] = phase(client, args.calls, lambda i: bare(keys=keys, args=argv))
    for label, rules in (("9 rules (3 keys x 3 types)", nine_rules()), ("3 rules of 3 types", three_rules())):
        adm = Admission(client, FlowKeys(f"bench{len(out)}"))
        for i in range(200):  # warm-up: the scripts loaded, the keys made
            adm.acquire(f"warm-{i}", rules, tokens=100, lease_ms=600_000)
            adm.release(f"warm-{i}")
        with RoundTrips() as rt:
            adm.acquire("rt", rules, tokens=100, lease_ms=600_000)
        acquire_rt, rt.count = rt.count, 0
        with rt:
            adm.release("rt")
        release_rt = rt.count
        log(f"{label}: {args.calls} acquires")
        acq = phase(client, args.calls,
                    lambda i, adm=adm, rules=rules: adm.acquire(f"h{i}", rules, tokens=100, lease_ms=600_000))
        acq["round_trips"] = acquire_rt
        log(f"{label}: {args.calls} releases")
        rel = phase(client, args.calls, lambda i, adm=adm: adm.release(f"h{i}"))
        rel["round_trips"] = release_rt
        out[f"acquire, {label}"] = acq
        out[f"release, {label}"] = rel
    return out


def table(results: dict[str, Any]) -> str:
    head = (f"{'':44} {'Redis µs/call':>13} {'best batch':>10} {'round trips':>11} {'calls/s':>9} {'p50 ms':>7} "
            f"{'p99 ms':>7}")
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        lines.append(f"{name:44} {r['redis_us_per_call']:13.1f} {r['redis_us_best_batch']:10.1f} "
                     f"{r.get('round_trips', 1):>11} {r['calls_per_s']:9.0f} {r['p50_ms']:7.3f} {r['p99_ms']:7.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20000, help="acquires (then releases) per phase")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="admission-bench-") as tmp, RedisServer(Path(tmp) / "redis") as server:
        log(f"redis-server {server.binary} on port {server.port}")
        results = measure(server, args)
    print(json.dumps(results, indent=2) if args.json else table(results))


if __name__ == "__main__":
    main()
