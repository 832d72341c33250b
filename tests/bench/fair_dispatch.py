"""Fair-dispatch benchmark: how many deferred items a dispatcher moves per second.

A script, not a test. Run it from the repository root::

    .venv/bin/python tests/bench/fair_dispatch.py [--items 5000] [--keys 1,10,100] [--json]

It starts its own redis-server on a free port (no AOF) and drives ``Engine`` through the stub
dispatcher (``workers.testing.make_stub_engine``: messages are recorded, never delivered), so
what is timed is the dispatcher itself: Redis and its Python side, no broker, no worker.

For each number of fairness keys: ``--items`` runs are started over that many tenants while
one start in flight is allowed (a ``global`` start rule of concurrency 1 held by an outside
holder), so every one is parked; then the rule is raised to a million and one
``Engine.flow_dispatch()`` call after another serves the queues until they are empty. Reported:
items dispatched per second, items per pass call, and Redis commands per item
(``INFO commandstats``).

Baseline, in the same run and on the same store: the same number of admissions made one by one
with ``Admission.acquire`` on the same rule (the least work any dispatcher must do per item),
and of messages sent straight to the stub with the run hash read (``HMGET``), as the
dispatcher does for each item.

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

from benchlib import log  # noqa: E402

from runtime import WorkflowSpec  # noqa: E402
from runtime.models import StepPlan  # noqa: E402
from stores.redis import RedisBackend  # noqa: E402
from workers.flow import AdmissionKeys, LimitRule  # noqa: E402
from workers.flow.resolve import registry  # noqa: E402
from workers.registry import Registry  # noqa: E402
from workers.settings import WorkerSettings  # noqa: E402
from workers.testing import make_stub_engine  # noqa: E402

from support.redis_server import RedisServer  # noqa: E402


def _workflow() -> WorkflowSpec:
    def end(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="end", complete_output={})

    return WorkflowSpec(workflow_id="parked", entry_node="end", nodes={"end": end})


def commands(client: Any) -> int:
    return sum(int(v["calls"]) for k, v in client.info("commandstats").items() if k.startswith("cmdstat_"))


def one_size(server: RedisServer, items: int, keys: int, prefix: str) -> dict[str, Any]:
    client = server.client()
    backend = RedisBackend(client, prefix=prefix)
    reg = Registry()
    spec = reg.register_workflow(_workflow())
    engine, stub = make_stub_engine(backend, reg, WorkerSettings(flow_rules_cache_s=0))
    limits = registry(backend)
    held = LimitRule(key="global", name="starts", scope="run", concurrency=1)
    limits.set_rule(held)
    engine.flow.admission.acquire("outside/start", [("global|run|starts", held)], lease_ms=3_600_000)
    log(f"{keys} keys: parking {items} run starts")
    t0 = time.perf_counter()
    for i in range(items):
        engine.create(spec, flow=AdmissionKeys(tenant=f"t{i % keys}"))
    park_s = time.perf_counter() - t0
    assert engine.fair.queue.queued() == keys, engine.fair.queue.queued()
    limits.set_rule(LimitRule(key="global", name="starts", scope="run", concurrency=1_000_000))
    sent_before = len(stub.sent)
    c0, t0, calls = commands(client), time.perf_counter(), 0
    while engine.fair.queue.queued():
        engine.flow_dispatch()
        calls += 1
    dispatch_s = time.perf_counter() - t0
    dispatched = len(stub.sent) - sent_before
    per_item_cmds = (commands(client) - c0) / max(1, dispatched)
    if dispatched != items:
        raise RuntimeError(f"{dispatched} of {items} items dispatched")
    # baseline 1: admissions alone, one by one, on the same rule
    rule = [("global|run|starts", LimitRule(key="global", name="starts", scope="run", concurrency=1_000_000))]
    c0, t0 = commands(client), time.perf_counter()
    for i in range(items):
        engine.flow.admission.acquire(f"base{i}/start", rule, lease_ms=60_000)
    admit_s = time.perf_counter() - t0
    admit_cmds = (commands(client) - c0) / items
    # baseline 2: a message straight to the stub, with the run hash read as the dispatcher reads it
    run_ids = [m.run_id for m in stub.sent[sent_before:]]
    t0 = time.perf_counter()
    for rid in run_ids:
        v, g = client.hmget(backend.keys.run(rid), "v", "g")
        stub.tick(rid, int(v), token=int(g) if g else None)
    send_s = time.perf_counter() - t0
    return {"keys": keys, "items": items, "park_per_s": items / park_s,
            "dispatch_per_s": items / dispatch_s, "passes": calls, "commands_per_item": per_item_cmds,
            "admit_only_per_s": items / admit_s, "admit_commands": admit_cmds, "send_only_per_s": items / send_s}


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'keys':>6} {'items':>7} {'parked/s':>9} {'dispatched/s':>13} {'dispatch calls':>15} "
             f"{'cmds/item':>10} {'admit-only/s':>13} {'send-only/s':>12} {'dispatch/admit':>15}", "-" * 110]
    for r in rows:
        lines.append(f"{r['keys']:>6} {r['items']:>7} {r['park_per_s']:>9.0f} {r['dispatch_per_s']:>13.0f} "
                     f"{r['passes']:>15} {r['commands_per_item']:>10.1f} {r['admit_only_per_s']:>13.0f} "
                     f"{r['send_only_per_s']:>12.0f} {r['dispatch_per_s'] / r['admit_only_per_s']:>14.2f}x")
    lines.append("dispatched/s: parked run starts admitted and sent by Engine.flow_dispatch() (stub dispatcher);")
    lines.append("admit-only/s: Admission.acquire alone, one by one (baseline); send-only/s: HMGET + a stub send")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=5000, help="parked items per size")
    parser.add_argument("--keys", default="1,10,100", help="numbers of fairness keys, comma-separated")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args()
    sizes = [int(k) for k in args.keys.split(",") if k.strip()]
    with tempfile.TemporaryDirectory(prefix="fair-bench-") as tmp, RedisServer(Path(tmp) / "redis") as server:
        log(f"redis-server {server.binary} on port {server.port}")
        rows = [one_size(server, args.items, keys, f"fb{n}") for n, keys in enumerate(sizes)]
    print(json.dumps(rows, indent=2) if args.json else table(rows))


if __name__ == "__main__":
    main()
