"""Console benchmark (issue 17): the server time of its pages, their weight, and the Redis readers
of browsers following a run.

A script, not a test. Run it from the repository root::

    .venv/bin/python tests/bench/console.py [--runs 100000] [--records 10000] [--followers 50] [--json]

It starts its own redis-server on a free port, writes ``--runs`` runs with ``bench_fill`` (the
same commit script as the workers: states, ledgers, indexes), appends ``--records`` ledger
records to one more run, and serves the console (uvicorn, on loopback, in this process). Then:

* the runs list (first page, and filtered by status), and the 10,000-record run's page: the
  median and p95 of 20 requests each, measured at the client over loopback (so an upper bound
  of the server's time); the baseline in the same run is one ``ZREVRANGE`` + ``HGET`` of 50
  runs, the least any list page must do;
* the page weight: the run page's HTML plus the script and the style sheet;
* ``--followers`` SSE connections following one run while it commits 20 times: how many
  connections the console holds on Redis blocked in ``XREAD`` (``CLIENT LIST``), whether
  every follower got every commit, and how long after its commit each got it.

The issue's targets: runs list ≤ 100 ms with 100k runs, run page ≤ 150 ms for a 10,000-step
run, 50 browsers on one run cost one Redis reader, page weight ≤ 150 KB.
Progress goes to stderr, the table (or JSON) to stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent), str(HERE)]

from bench_fill import fill, split  # noqa: E402
from benchlib import log  # noqa: E402

from support.console_server import ConsoleServer, login, write_auth_file  # noqa: E402
from support.redis_server import RedisServer  # noqa: E402


def timed(http: Any, url: str, n: int = 20, **params: Any) -> tuple[float, float, int]:
    times, size = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        response = http.get(url, params=params)
        times.append((time.perf_counter() - t0) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{url}: {response.status_code} {response.text[-800:]}")
        size = len(response.content)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1], size


def main() -> int:
    import httpx

    from runtime import RunStatus, StepPlan, StepRecord, WorkflowSpec
    from runtime.records import StepStatus
    from stores.redis import RedisBackend
    from workers.client import Client
    from workers.registry import Registry
    from workers.settings import WorkerSettings
    from workers.testing import DrainLimitReached, StubDispatcher

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--followers", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out: dict[str, Any] = {"runs": args.runs, "records": args.records}
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis") as server:
        backend = RedisBackend(server.client(), prefix="console-bench")
        log(f"writing {args.runs:,} runs")
        fill(backend, split(args.runs, {"completed": 6, "failed": 1, "user": 2, "event": 1}), args.runs)
        backend = RedisBackend(server.client(), prefix="console-bench")  # (the filler's catches its scripts)

        def step(i: int, last: bool) -> Any:
            def run(r: Any, ctx: Any) -> StepPlan:
                return StepPlan(node_id=f"n{i}", complete_output={}) if last else StepPlan(node_id=f"n{i}",
                                                                                        next_node=f"n{i + 1}")
            return run

        reg = Registry()
        reg.register_workflow(WorkflowSpec(workflow_id="hold", entry_node="n0", nodes={"n0": step(0, True)}))
        reg.register_workflow(WorkflowSpec(workflow_id="steps20", entry_node="n0",
                                           nodes={f"n{i}": step(i, i == 19) for i in range(20)}))
        stub = StubDispatcher()
        client = Client(WorkerSettings(), backend=backend, dispatcher=stub, reg=reg)
        long_run = client.start("hold")
        stub.run_until_quiet(client.engine)
        log(f"appending {args.records:,} ledger records to {long_run}")
        for base in range(0, args.records, 500):
            backend.append([StepRecord(run_id=long_run, step_id=f"s{base + i}", node_id=f"n{(base + i) % 9}",
                                       status=StepStatus.COMPLETED, result={"i": base + i, "text": "x" * 80})
                            for i in range(min(500, args.records - base))], run_id=long_run)
        r = server.client()
        t0 = time.perf_counter()
        for _ in range(20):
            ids = r.zrevrange(backend.keys.by_updated(), 0, 49)
            pipe = r.pipeline(transaction=False)
            for rid in ids:
                pipe.hget(backend.keys.run(rid.decode()), "s")
            pipe.execute()
        out["baseline_ms"] = round((time.perf_counter() - t0) / 20 * 1000, 2)
        with ConsoleServer(client, write_auth_file(Path(tmp))) as console, \
                httpx.Client(base_url=console.url, timeout=60) as http:
            login(http, "vi")
            log("timing the pages")
            out["runs_list_ms"] = timed(http, "/runs")[:2]
            out["runs_list_status_ms"] = timed(http, "/runs", status="completed")[:2]
            median, p95, html = timed(http, f"/runs/{long_run}")
            out["run_page_ms"] = (median, p95)
            script = len(http.get("/static/console.js").content)
            style = len(http.get("/static/console.css").content)
            out["page_weight_kb"] = round((html + script + style) / 1024, 1)

            log(f"{args.followers} followers of one run")
            run_id = client.start("steps20", vars={"_hold": True})
            got = [0] * args.followers
            seen: list[list[tuple[int, float]]] = [[] for _ in range(args.followers)]  # (version, when)
            ready = threading.Barrier(args.followers + 1)
            cookies = dict(http.cookies)

            def follow(i: int) -> None:
                with httpx.Client(base_url=console.url, cookies=cookies, timeout=60) as mine, \
                        mine.stream("GET", f"/runs/{run_id}/events") as stream:
                    ready.wait()
                    for line in stream.iter_lines():
                        if line.startswith("data:"):
                            got[i] += 1
                            event = json.loads(line[5:])
                            seen[i].append((int(event.get("v") or 0), time.perf_counter()))
                            if event.get("status") == RunStatus.COMPLETED.value:
                                return

            threads = [threading.Thread(target=follow, args=(i,), daemon=True) for i in range(args.followers)]
            for t in threads:
                t.start()
            ready.wait()
            time.sleep(1.0)  # (every stream registered with the hub)
            readers = [c for c in r.client_list() if c.get("cmd") in ("xread", "xreadgroup")]
            commits = 0
            committed: dict[int, float] = {}
            while client.get_state(run_id).status != RunStatus.COMPLETED:
                try:
                    stub.drain(client.engine, max_messages=1)  # one commit at a time
                except DrainLimitReached:
                    pass
                committed[backend.load_versioned(run_id)[1]] = time.perf_counter()
                commits += 1
                time.sleep(0.05)
            for t in threads:
                t.join(30)
            out["followers"] = args.followers
            out["redis_readers_blocked_in_xread"] = len(readers)
            out["hub_reads"] = console.app.state.hub.reads
            out["events_per_follower_min"] = min(got)
            out["commits"] = commits
            lags = sorted((when - committed[v]) * 1000 for mine in seen for v, when in mine if v in committed)
            out["commit_to_browser_ms"] = None if not lags else (
                round(statistics.median(lags), 1), round(lags[max(0, int(len(lags) * 0.99) - 1)], 1))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{args.runs:,} runs; one run of {args.records:,} ledger records (median / p95 of 20 requests)")
    print(f"baseline: ZREVRANGE + 50 HGET       {out['baseline_ms']:>8.2f} ms")
    print(f"runs list, first page               {out['runs_list_ms'][0]:>8.1f} / {out['runs_list_ms'][1]:.1f} ms")
    print(f"runs list, status=completed         {out['runs_list_status_ms'][0]:>8.1f} / "
          f"{out['runs_list_status_ms'][1]:.1f} ms")
    print(f"run page, {args.records:,} records          {out['run_page_ms'][0]:>8.1f} / {out['run_page_ms'][1]:.1f} ms")
    print(f"page weight (HTML + script + style) {out['page_weight_kb']:>8.1f} KB")
    print(f"{args.followers} SSE followers of one run: {out['redis_readers_blocked_in_xread']} Redis connection(s) "
          f"in XREAD; each follower got >= {out['events_per_follower_min']} events of {out['commits']} commits")
    if out["commit_to_browser_ms"]:
        print(f"from a commit to its event at a follower: median {out['commit_to_browser_ms'][0]} ms, "
              f"p99 {out['commit_to_browser_ms'][1]} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
