"""Flow-control admission benchmark: Redis CPU per admission and per release, and round trips.

A script, not a test. Run it from the repository root::

    .venv/bin/python tests/bench/admission.py [--calls 20000] [--json]

It starts its own redis-server on a free port (``tests/support/redis_server.py``, no AOF), and
measures ``stores.redis.admission.Admission`` on the Redis clock (no test clock: the scripts
call ``TIME`` and set key expiries, as in production), one client connection:

* ``acquire`` on a key path of 3 levels (``tenant:acme``, ``user:u-7``, ``agent:support``) x 3
  rule types (concurrency, rate, tokens with a reservation): 9 rules, 27 keys, one script
  call (each rule sends only the keys and numbers of its own limits); and the same limits as 3
  rules of 3 types each. The limits never block (the point is the cost of a full check and
  take), and
* ``release`` (the held set is read first, then one script call), and ``release`` given the
  holder's rules (as the gate knows them: one script call).

Steady state, as in a worker fleet: a batch of 250 holders is admitted, then the 250 are
released, and again (``--calls`` of each in all), so the slot and holder sets hold at most 250
live holders and every budget hash at most 250 open reservations; nothing grows with
``--calls``.

Redis CPU per call is ``usec_per_call`` of ``cmdstat_evalsha`` from ``INFO commandstats``
(``CONFIG RESETSTAT`` before each batch of 250 calls; it includes the commands the script runs;
Redis times it by the wall clock, so a busy VM inflates it): the median batch and the best. Round
trips are counted in the client (socket sends) for one call of each. Baseline in the same
run: a bare ``EVALSHA`` of ``return 1``, with no arguments and with the KEYS and ARGV one acquire
of the 9 rules sends (what Redis spends making Lua tables of them; taken from a real call, so
it follows the script's layout). Target (issue 14): acquire <= 60 µs and one round trip.

Progress goes to stderr, the table (or JSON) to stdout.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent), str(HERE)]

from redis.connection import Connection  # noqa: E402

from stores.redis.admission import Admission  # noqa: E402
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


def _stats(per_batch: list[float], lat: list[float], wall: float) -> dict[str, float]:
    lat.sort()
    per_batch.sort()
    return {"redis_us_per_call": per_batch[len(per_batch) // 2], "redis_us_best_batch": per_batch[0],
            "calls_per_s": len(lat) / wall, "p50_ms": lat[len(lat) // 2] * 1e3,
            "p99_ms": lat[int(len(lat) * 0.99)] * 1e3}


def _batch(client: Any, fns: list[Any], lat: list[float]) -> tuple[float, float]:
    """Calls each of ``fns`` after ``CONFIG RESETSTAT``: (Redis µs per EVALSHA, wall seconds)."""
    client.config_resetstat()
    t_start = time.perf_counter()
    for fn in fns:
        t0 = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t0)
    wall = time.perf_counter() - t_start
    n, usec = evalsha_stats(client)
    return usec / max(n, 1), wall


def phase(client: Any, calls: int, fn: Any, batch: int = 250) -> dict[str, float]:
    """Calls in batches (``CONFIG RESETSTAT`` before each): the Redis µs per call of the median batch
    and of the best one (the VM's noise only ever adds), latency percentiles over all calls."""
    lat: list[float] = []
    per_batch, wall = [], 0.0
    for start in range(0, calls, batch):
        us, w = _batch(client, [lambda i=i: fn(i) for i in range(start, min(calls, start + batch))], lat)
        per_batch.append(us)
        wall += w
    return _stats(per_batch, lat, wall)


def steady(client: Any, adm: Admission, rules: Any, calls: int, batch: int = 250,
           given: bool = False) -> tuple[dict, dict]:
    """Admit a batch of holders, release them (``given``: with their rules), again: (acquire stats,
    release stats)."""
    acq_lat: list[float] = []
    rel_lat: list[float] = []
    acq_batches, rel_batches, acq_wall, rel_wall = [], [], 0.0, 0.0
    for start in range(0, calls, batch):
        holders = [f"run-{i}/step/1" for i in range(start, min(calls, start + batch))]
        us, w = _batch(client, [lambda h=h: adm.acquire(h, rules, tokens=100, lease_ms=600_000) for h in holders],
                       acq_lat)
        acq_batches.append(us)
        acq_wall += w
        if given:
            us, w = _batch(client, [lambda h=h: adm.release(h, rules) for h in holders], rel_lat)
        else:
            us, w = _batch(client, [lambda h=h: adm.release(h) for h in holders], rel_lat)
        rel_batches.append(us)
        rel_wall += w
    return _stats(acq_batches, acq_lat, acq_wall), _stats(rel_batches, rel_lat, rel_wall)


def sent_by_acquire(adm: Admission, rules: Any) -> tuple[list[Any], list[Any]]:
    """The KEYS and ARGV of one real acquire (then released)."""
    real, seen = adm._admit, []

    def recording(keys: list[Any], args: list[Any]) -> Any:
        seen.append((keys, args))
        return real(keys=keys, args=args)

    adm._admit = recording
    try:
        adm.acquire("shape", rules, tokens=100, lease_ms=600_000)
    finally:
        adm._admit = real
    adm.release("shape")
    return seen[0]


def measure(server: RedisServer, args: argparse.Namespace) -> dict[str, Any]:
    client = server.client()
    out: dict[str, Any] = {}
    bare = client.register_script("return 1")
    bare()
    out["baseline: bare EVALSHA (return 1)"] = phase(client, args.calls, lambda i: bare())
    keys, argv = sent_by_acquire(Admission(client, FlowKeys("same-shape")), nine_rules())
    out["baseline: bare EVALSHA, 9 rules' KEYS/ARGV"] = phase(client, args.calls, lambda i: bare(keys=keys, args=argv))
    out["baseline: bare EVALSHA, 9 rules' KEYS/ARGV"]["shape"] = f"{len(keys)} KEYS, {len(argv)} ARGV"
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
        release_rt, rt.count = rt.count, 0
        log(f"{label}: {args.calls} acquires and releases, 250 at a time")
        acq, rel = steady(client, adm, rules, args.calls)
        acq["round_trips"], rel["round_trips"] = acquire_rt, release_rt
        out[f"acquire, {label}"] = acq
        out[f"release, {label}"] = rel
        if "rules" not in inspect.signature(adm.release).parameters:
            continue  # an older tree (before/after runs): its release reads the held set always
        adm.acquire("rt", rules, tokens=100, lease_ms=600_000)
        with rt:
            adm.release("rt", rules)
        log(f"{label}: {args.calls} acquires and releases given the rules, 250 at a time")
        _acq, rel = steady(client, adm, rules, args.calls, given=True)
        rel["round_trips"] = rt.count
        out[f"release given its rules, {label}"] = rel
    return out


def table(results: dict[str, Any]) -> str:
    head = (f"{'':50} {'Redis µs/call':>13} {'best batch':>10} {'round trips':>11} {'calls/s':>9} {'p50 ms':>7} "
            f"{'p99 ms':>7}")
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        lines.append(f"{name:50} {r['redis_us_per_call']:13.1f} {r['redis_us_best_batch']:10.1f} "
                     f"{r.get('round_trips', 1):>11} {r['calls_per_s']:9.0f} {r['p50_ms']:7.3f} {r['p99_ms']:7.3f}")
    shape = results.get("baseline: bare EVALSHA, 9 rules' KEYS/ARGV", {}).get("shape")
    if shape:
        lines.append(f"(one acquire of the 9 rules sends {shape})")
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
