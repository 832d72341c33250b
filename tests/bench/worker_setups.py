"""Worker setups benchmark (issue 18): the four shapes of durable work, for each way of starting
``abstractruntime worker``, with the bare Celery hop on the same workers as the floor.

A script, not a test. Run it from the repository root::

    .venv/bin/python tests/bench/worker_setups.py [--setups auto,prefork,threads] [--rounds 3]
        [--aof] [--compare-python PATH] [--json]

It starts its own redis-server on a free port (broker and runs on it; ``--aof``: AOF with
fsync every second, as a production Redis keeps it), then for each setup and round starts the
workers exactly as a user does, through the CLI, on every queue:

* ``auto``: ``abstractruntime worker`` (the default: a solo process per CPU, threads for llm,
  and the default settings: a task runs up to 16 steps of its run);
* ``auto-k1``: the same with ``ABSTRACTRUNTIME_STEPS_PER_TASK=1`` (every step its own task);
* ``prefork``: ``abstractruntime worker -P prefork`` (the pool before issue 18);
* ``threads``: ``abstractruntime worker -P threads``;
* ``solo1``: ``abstractruntime worker -P solo`` (one process: the floor of one CPU);

each with ``-c`` = the number of CPUs, and measures on them, one after the other:

* floor: ``bench.hop`` (``bench_celery.py``), a bare Celery task that sends itself again,
  1 chain x 2000 hops and 200 chains x 20 hops: hops/s;
* ours, effect-free: 1 run x 2000 nodes and 200 runs x 20 nodes: ticks/s;
* ours, tool calls (``support/inline_scenarios.py``; each call a durable step: request
  committed, tool run, outcome committed, next node), 1 run x 500 and 200 runs x 10: queued
  (``quick_queued``, a tool not marked inline: each call a task on ``tools``) and inline
  (``quick``, ``@tool(inline=True)``: run in the task that asked for it): calls/s.

Setups alternate within each round; the table gives medians and each setup's ratio to the best
setup of its row and to the bare hop on the same setup. DBOS and LangGraph are measured by
``cmp_dbos.py`` and ``cmp_langgraph.py`` with ``--compare-python`` (a virtualenv where they are
installed; default: this interpreter), on PostgreSQL at ``--dsn``, one round of theirs after
each round of ours (their medians over the same rounds); when they are not installed (the
scripts exit 3) the table says so. Progress goes to stderr, the table (or JSON) to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from benchlib import log, wait_completed  # noqa: E402

from support.celery_workers import WorkerGroup  # noqa: E402
from support.redis_server import RedisServer  # noqa: E402

CLI = str(Path(sys.executable).with_name("abstractruntime"))
ALL_KINDS = "ticks,llm,tools,subworkflows,timers,maintenance"
#: name -> (CLI arguments, settings as ABSTRACTRUNTIME_* variables).
SETUPS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "auto": ([], {}),
    "auto-k1": ([], {"steps_per_task": 1}),
    "prefork": (["-P", "prefork"], {}),
    "threads": (["-P", "threads"], {}),
    "solo1": (["-P", "solo"], {}),
}
#: (row key, label, unit) in table order.
ROWS = [
    ("hop_1x2000", "bare Celery hop, 1 chain x 2000", "hops/s"),
    ("hop_200x20", "bare Celery hop, 200 chains x 20", "hops/s"),
    ("chain_1x2000", "ours, 1 run x 2000 effect-free nodes", "ticks/s"),
    ("chain_200x20", "ours, 200 runs x 20 effect-free nodes", "ticks/s"),
    ("tools_1x500", "ours, 1 run x 500 tool-call steps, queued", "steps/s"),
    ("tools_200x10", "ours, 200 runs x 10 tool-call steps, queued", "steps/s"),
    ("inline_1x500", "ours, 1 run x 500 tool-call steps, inline", "steps/s"),
    ("inline_200x10", "ours, 200 runs x 10 tool-call steps, inline", "steps/s"),
]
CMP_SHAPES = {"chain_1x2000": "chain_1x2000", "chain_200x20": "chain_200x20", "tools_1x500": "tools_1x500",
              "tools_200x10": "tools_200x10", "inline_1x500": "tools_1x500", "inline_200x10": "tools_200x10"}


class Setup:
    """The workers of one setup, started through the CLI, and what runs on them."""

    def __init__(self, server: RedisServer, folder: Path, args: list[str], **settings: Any) -> None:
        self.group = WorkerGroup(server.url, folder, imports="support.celery_scenarios,bench_celery,"
                                 "support.inline_scenarios", **settings)
        self.args, self.r = args, server.client()
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: Any = None

    def __enter__(self) -> Setup:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_")}
        env.update(self.group.env)
        env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), str(HERE)])
        env["BENCH_QUEUE"] = self.group.settings().queue("ticks")  # where bench.hop sends itself
        cpus = str(os.cpu_count() or 1)
        with open(self.group.folder / "worker.log", "wb") as out:
            self.proc = subprocess.Popen([CLI, "worker", "-Q", ALL_KINDS, "-c", cpus, *self.args, "--",
                                          "--without-gossip", "--without-mingle"],
                                         env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        import bench_celery  # noqa: F401  (registers the chains here too, for start())

        import support.inline_scenarios  # noqa: F401

        self.client = self.group.client()
        self._ready()
        return self

    def _ready(self) -> None:
        queues = set(self.group.settings().queues)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited: {(self.group.folder / 'worker.log').read_text()[-2000:]}")
            try:
                active = self.client.app.control.inspect(timeout=0.5).active_queues() or {}
            except Exception:
                active = {}
            if queues <= {q["name"] for qs in active.values() for q in qs or []}:
                return
        raise RuntimeError("the worker did not consume every queue in 90 s")

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.group.close()

    def hops(self, chains: int, hops: int) -> float:
        keys = [uuid.uuid4().hex for _ in range(chains)]
        queue = self.group.settings().queue("ticks")
        t0 = time.time()
        for key in keys:
            self.client.app.send_task("bench.hop", args=[key, 0, hops, False], queue=queue)
        ends = []
        for key in keys:
            deadline = time.monotonic() + 600
            while (done := self.r.get(f"bench:done:{key}")) is None:
                if time.monotonic() > deadline:
                    raise RuntimeError("a bare chain did not finish")
                time.sleep(0.005)
            ends.append(float(done))
        return chains * hops / (max(ends) - t0)

    def runs(self, workflow_id: str, runs: int, steps: int, vars: dict[str, Any] | None = None) -> float:
        t0 = time.time()
        ids = [self.client.start(workflow_id, vars=vars) for _ in range(runs)]
        return runs * steps / (wait_completed(self.client, ids, what=f"{workflow_id} ") - t0)

    def warm(self) -> None:
        self.hops(1, 100)
        self.runs("plain_chain_20", 5, 20)
        self.runs("quick_calls", 5, 3, {"n": 3})
        self.runs("quick_queued_calls", 5, 3, {"n": 3})


def measure(name: str, setup: Setup, inline: bool) -> dict[str, float]:
    with setup:
        setup.warm()
        log(f"  {name}: bare hops, chains, tool calls")
        row = {"hop_1x2000": setup.hops(1, 2000), "hop_200x20": setup.hops(200, 20),
               "chain_1x2000": setup.runs("plain_chain_2000", 1, 2000),
               "chain_200x20": setup.runs("plain_chain_20", 200, 20),
               "tools_1x500": setup.runs("quick_queued_calls", 1, 500, {"n": 500}),
               "tools_200x10": setup.runs("quick_queued_calls", 200, 10, {"n": 10})}
        if inline:  # (with steps_per_task 1, an inline tool's calls are queued too)
            row |= {"inline_1x500": setup.runs("quick_calls", 1, 500, {"n": 500}),
                    "inline_200x10": setup.runs("quick_calls", 200, 10, {"n": 10})}
        return row


def compare(python: str, script: str, dsn: str, rounds: int) -> dict[str, Any]:
    """A comparison script's JSON, or {"skipped": why}."""
    log(f"comparison: {script}")
    proc = subprocess.run([python, str(HERE / script), "--json", "--rounds", str(rounds), "--dsn", dsn],
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode == 3:
        return {"skipped": (proc.stderr.strip().splitlines() or ["not installed"])[-1]}
    if proc.returncode != 0:
        return {"skipped": f"{script} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"}
    return json.loads(proc.stdout)


def merged(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A comparison's rounds as one result: the median of each shape, its rounds kept."""
    done = [r for r in runs if "skipped" not in r]
    if not done:
        return runs[0] if runs else {"skipped": "not run"}
    shapes = {k: statistics.median(v) if (v := [r["shapes"][k] for r in done if r["shapes"].get(k) is not None])
              else None for k in done[0]["shapes"]}
    return {**done[0], "shapes": shapes, "rounds": [r["shapes"] for r in done]}


def table(out: dict[str, Any], setups: list[str]) -> str:
    med = out["median"]
    cmps = [c for c in out["compare"].values() if "skipped" not in c]
    head = f"{'shape':46}" + "".join(f"{s:>16}" for s in setups) + "".join(f"{c['system']:>12}" for c in cmps)
    lines = [f"median of {out['rounds']} rounds, -c {os.cpu_count()}, Redis AOF {'everysec' if out['aof'] else 'off'}"
             "; each cell: per second (ratio to the best setup of the row)", "", head]
    for key, label, unit in ROWS:
        values = {s: med[s][key] for s in setups if key in med.get(s, {})}
        if not values:
            continue
        best = max(values.values())
        cells = "".join(f"{f'{values[s]:,.0f} ({values[s] / best:.2f})' if s in values else '—':>16}" for s in setups)
        theirs = [c["shapes"].get(CMP_SHAPES.get(key, "")) for c in cmps]
        other = "".join(f"{x:>12,.0f}" if isinstance(x, (int, float)) else f"{'—':>12}" for x in theirs)
        lines.append(f"{label + ' (' + unit + ')':46}{cells}{other}")
    lines.append("")
    for s in setups:
        m = med.get(s, {})
        if "hop_200x20" in m:
            lines.append(f"{s}: ours / bare hop on the same workers: "
                         f"1 x 2000 {m['chain_1x2000'] / m['hop_1x2000']:.2f}x, "
                         f"200 x 20 {m['chain_200x20'] / m['hop_200x20']:.2f}x")
    if "auto" in med and "inline_200x10" in med["auto"] and "tools_200x10" in med["auto"]:
        a = med["auto"]
        lines.append(f"auto: inline / queued tool calls: 1 x 500 {a['inline_1x500'] / a['tools_1x500']:.2f}x, "
                     f"200 x 10 {a['inline_200x10'] / a['tools_200x10']:.2f}x")
    for c in cmps:
        s = c["shapes"]
        if "auto" in med and isinstance(s.get("tools_200x10"), float):
            a = med["auto"]
            lines.append(f"auto / {c['system']} {c.get('version', '')}, 200 x 10 tool calls: queued "
                         f"{a['tools_200x10'] / s['tools_200x10']:.2f}x"
                         + (f", inline {a['inline_200x10'] / s['tools_200x10']:.2f}x" if "inline_200x10" in a else ""))
    for name, c in out["compare"].items():
        if "skipped" in c:
            lines.append(f"{name}: {c['skipped']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setups", default="auto,auto-k1,prefork,threads", help=f"of {', '.join(SETUPS)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--aof", action="store_true", help="Redis with AOF, fsync every second")
    parser.add_argument("--no-inline", action="store_true", help="skip the inline tool-call rows")
    parser.add_argument("--compare-python", default=sys.executable,
                        help="an interpreter with dbos / langgraph installed (cmp_*.py); 'none' to skip")
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--save", metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument("--load", metavar="FILE", help="print the table of results saved with --save")
    args = parser.parse_args()
    if args.load:
        saved = json.loads(Path(args.load).read_text())
        print(table(saved, list(saved["median"])))
        return 0
    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    if unknown := [s for s in setups if s not in SETUPS]:
        parser.error(f"unknown setup(s) {', '.join(unknown)}; known: {', '.join(SETUPS)}")
    got: dict[str, list[dict[str, float]]] = {s: [] for s in setups}
    # The comparisons run a round each after each round of ours, so that what drifts on the
    # machine (PostgreSQL's fsyncs above all) weighs on both sides alike.
    theirs: dict[str, list[dict[str, Any]]] = {} if args.compare_python == "none" else {"dbos": [], "langgraph": []}
    with tempfile.TemporaryDirectory(prefix="workers-bench-") as tmp:
        server = RedisServer(Path(tmp) / "redis").start(appendonly=args.aof)
        try:
            for r in range(args.rounds):
                log(f"round {r + 1}/{args.rounds}")
                for s in setups:
                    cli, settings = SETUPS[s]
                    got[s].append(measure(s, Setup(server, Path(tmp) / f"{s}-{r}", cli, **settings),
                                          inline=not args.no_inline))
                for name, runs in theirs.items():
                    runs.append(compare(args.compare_python, f"cmp_{name}.py", args.dsn, 1))
        finally:
            server.stop()
    out: dict[str, Any] = {"rounds": args.rounds, "aof": args.aof, "rows": got,
                           "median": {s: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
                                      for s, rows in got.items() if rows}}
    out["compare"] = {name: merged(runs) for name, runs in theirs.items()}
    if args.save:
        Path(args.save).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2) if args.json else table(out, setups))
    return 0


if __name__ == "__main__":
    sys.exit(main())
