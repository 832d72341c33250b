"""Tracing benchmark (issue 16): ticks per second with OpenTelemetry traces on and off.

A script, not a test. Run it from the repository root::

    .venv/bin/python tests/bench/tracing.py [--ticks 3000] [--rounds 3] [--json]

It starts its own redis-server on a free port and an OTLP/HTTP sink on loopback (it answers 200
and drops the spans), then, in child processes, runs ``--ticks`` ticks of 50-node effect-free
chains through ``Engine`` and the stub dispatcher (load, node, commit: the cheapest tick, where
a span costs the most in relative terms): with traces off (no endpoint: the hooks return at
once), and on (``OTEL_EXPORTER_OTLP_ENDPOINT`` set: a tick span and a commit span per tick,
batched to the sink). Rounds alternate; the median of each side and their ratio are printed
(the issue's targets: on ≤ 5 % of ticks/s, off ≤ 1 %, against a tree without tracing, which
the off side stands for: its hooks are one dict lookup).

Progress goes to stderr, the table (or JSON) to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent), str(HERE)]

from benchlib import log  # noqa: E402

from support.redis_server import RedisServer  # noqa: E402

_CHILD = r"""
import sys, time, uuid
sys.path[:0] = {paths!r}
from runtime.models import StepPlan
from runtime.spec import WorkflowSpec
from stores.redis import RedisBackend
from workers.registry import Registry
from workers.settings import WorkerSettings
from workers.testing import make_stub_engine
import redis

def node(i, last):
    def run(r, ctx):
        return StepPlan(node_id=f"n{{i}}", complete_output={{}}) if last else StepPlan(node_id=f"n{{i}}",
                                                                                    next_node=f"n{{i + 1}}")
    return run

reg = Registry()
spec = reg.register_workflow(WorkflowSpec(workflow_id="chain50", entry_node="n0",
                                          nodes={{f"n{{i}}": node(i, i == 49) for i in range(50)}}))
backend = RedisBackend(redis.Redis.from_url({url!r}), prefix="t" + uuid.uuid4().hex[:6])
engine, stub = make_stub_engine(backend, reg, WorkerSettings())
runs = max(1, {ticks} // 50)
engine.create(spec); stub.run_until_quiet(engine)  # warm up
t0 = time.perf_counter()
for _ in range(runs):
    engine.create(spec)
    stub.run_until_quiet(engine)
print(runs * 50 / (time.perf_counter() - t0))
"""


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def side(url: str, ticks: int, endpoint: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    code = _CHILD.format(paths=[str(HERE.parents[1])], url=url, ticks=ticks)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ticks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{sink.server_port}"
    off: list[float] = []
    on: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp)) as server:
        for r in range(args.rounds):
            log(f"round {r + 1}/{args.rounds}")
            off.append(side(server.url, args.ticks, None))
            on.append(side(server.url, args.ticks, endpoint))
    sink.shutdown()
    out = {"off_ticks_per_s": round(statistics.median(off)), "on_ticks_per_s": round(statistics.median(on)),
           "on_over_off": round(statistics.median(on) / statistics.median(off), 3), "rounds_off": off, "rounds_on": on}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"traces off  {out['off_ticks_per_s']:>6} ticks/s (median of {args.rounds})")
        print(f"traces on   {out['on_ticks_per_s']:>6} ticks/s  = {out['on_over_off']:.3f}x off "
              "(a tick span and a commit span per tick, batched over OTLP/HTTP)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
