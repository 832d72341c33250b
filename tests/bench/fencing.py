"""Fencing benchmark: Celery tick throughput of this tree against a tree without fencing tokens.

A script, not a test. Run it from the repository root::

    .venv/bin/python tests/bench/fencing.py [--baseline REF] [--rounds 3] [--nodes 2000] [--runs 100]
        [--per-run 20] [--json]

The baseline is a ``git worktree`` of ``--baseline`` in a temp folder (removed at exit; the
repository's branches, index and working tree are not touched). By default it is the parent
of the first commit that adds ``stores/redis/lua/fence.lua``
(``git log --diff-filter=A -- stores/redis/lua/fence.lua``); while no commit adds it (fencing
not committed yet, in the working tree only), the default is ``HEAD`` and the table says so.

It starts its own redis-server on a free port (``tests/support/redis_server.py``; no AOF). Each
round measures both trees, the current one first in odd rounds and the baseline first in
even ones (to cancel drift), each with real worker processes (``python -m celery -A
workers.app worker -P solo``, a ``WorkerGroup`` of ``tests/support/celery_workers.py`` whose
workers run with the tree's root, then its ``tests/``, then this folder on ``PYTHONPATH``, in
the tree's root): a warm-up, then

* 1 run x ``--nodes`` effect-free nodes on one worker: ticks/s;
* ``--runs`` runs x ``--per-run`` nodes on two workers: ticks/s;

and the Redis commands per tick of the long run (``INFO commandstats``, store and broker, the
driver's polling left out), which do not depend on how busy the machine is.

The runs are started and watched by a driver process of the same tree (this script with
``--drive``), since the client's commit and messages are part of what differs. Each worker
and driver prints the ``workers`` package it imported; the script stops if it is not the
tree's, and checks that the current tree's runs carry a fencing token (field ``g``) and the
baseline's do not (when the baseline has no fencing). The workflows are chains of
effect-free nodes (``bench_celery.stamp_chain``), registered by this module when a worker
imports it. Prints each round and the median ratio current/baseline.
Target (issue 13): tick throughput with fencing >= 0.97x without it.

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
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
#: The variable naming the chain lengths a worker importing this module registers.
CHAINS_ENV = "BENCH_FENCING_CHAINS"
#: The file whose first commit is fencing.
FENCE_FILE = "stores/redis/lua/fence.lua"
#: What a worker or driver prints once it imported the project (then the path of ``workers``).
MARK = "bench-fencing: workers imported from "
#: Ratio current/baseline the issue asks for.
TARGET_RATIO = 0.97
QUEUES = "ticks,timers,maintenance,llm,tools,subworkflows"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def chain_id(n: int) -> str:
    return f"plain_chain_{n}"


# -- in a worker or a driver: the workflows -----------------------------------------------------------


def _register_chains() -> None:
    from bench_celery import stamp_chain

    import workers
    from workers.registry import register_workflow

    for n in {int(x) for x in os.environ[CHAINS_ENV].split(",")}:
        register_workflow(stamp_chain(n, False), replace=True)
    print(MARK + workers.__file__, flush=True)


# -- git -----------------------------------------------------------------------------------------------


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def baseline_ref(explicit: str | None) -> tuple[str, str]:
    """(ref, why) of the tree without fencing."""
    if explicit:
        return explicit, f"--baseline {explicit}"
    added = git("log", "--diff-filter=A", "--format=%H", "--", FENCE_FILE).splitlines()
    if added:
        first = added[-1]
        return f"{first}^", f"the parent of {first[:10]}, the first commit that adds {FENCE_FILE}"
    dirty = " (the working tree holds fencing, uncommitted)" if (ROOT / FENCE_FILE).exists() else ""
    return "HEAD", f"HEAD: no commit adds {FENCE_FILE} yet{dirty}"


class Worktree:
    """A detached ``git worktree`` of ``ref`` in a temp folder, removed on exit."""

    def __init__(self, ref: str, parent: Path) -> None:
        self.path = parent / "baseline-tree"
        self.sha = git("rev-parse", "--verify", f"{ref}^{{commit}}")
        self.ref = ref

    def __enter__(self) -> Worktree:
        git("worktree", "add", "--detach", str(self.path), self.sha)
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            git("worktree", "remove", "--force", str(self.path))
        except subprocess.CalledProcessError as err:
            log(f"could not remove the worktree {self.path}: {err.stderr.strip()}")


# -- the parent: workers of one tree, a driver of that tree ------------------------------------------


def tree_env(tree: Path) -> str:
    return os.pathsep.join([str(tree), str(tree / "tests"), str(HERE)])


def group_class() -> Any:
    from support import celery_workers
    from support.celery_workers import WorkerGroup

    class TreeGroup(WorkerGroup):
        """A WorkerGroup whose processes import the project from ``tree`` (run in it, with its
        root, its tests/ and this folder first on PYTHONPATH)."""

        def __init__(self, tree: Path, redis_url: str, folder: Path, **settings: Any) -> None:
            super().__init__(redis_url, folder, **settings)
            self.tree = tree

        def _spawn(self, name: str, argv: list[str], ready: str) -> subprocess.Popen[bytes]:
            env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_")}
            env.update(self.env)
            env["PYTHONPATH"] = tree_env(self.tree)
            log_path = self.folder / f"{name}.log"
            with open(log_path, "ab") as out:
                start = log_path.stat().st_size
                proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "workers.app", *argv], env=env,
                                        cwd=self.tree, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            self.procs[name] = proc
            deadline = time.monotonic() + celery_workers.READY_TIMEOUT_S
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")
                text = log_path.read_bytes()[start:].decode(errors="replace")
                if ready in text:
                    check_tree(text, self.tree, name)
                    return proc
                time.sleep(0.05)
            raise RuntimeError(f"{name} did not get ready:\n{self.log(name)[-3000:]}")

    return TreeGroup


def check_tree(text: str, tree: Path, who: str) -> str:
    """The ``workers`` path ``who`` printed; RuntimeError unless it is in ``tree``."""
    lines = [line for line in text.splitlines() if MARK in line]
    if not lines:
        raise RuntimeError(f"{who} did not say which tree it imported:\n{text[-2000:]}")
    path = lines[-1].split(MARK, 1)[1].strip()
    if not Path(path).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"{who} imported workers from {path}, not from {tree}")
    return path


def drive(group: Any, tree: Path, workflow: str, runs: int, warm: bool) -> dict[str, Any]:
    """Start and watch ``runs`` runs of ``workflow`` from a driver process of ``tree``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_")}
    env.update(group.env, PYTHONPATH=tree_env(tree))
    argv = [sys.executable, str(HERE / "fencing.py"), "--drive", workflow, "--runs", str(runs)]
    if warm:
        argv.append("--warm")
    proc = subprocess.run(argv, env=env, cwd=tree, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(f"the driver in {tree} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    check_tree(MARK + out["workers_file"], tree, "the driver")
    return out


def measure_tree(side: str, tree: Path, server: Any, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    group = group_class()(tree, server.url, folder, imports="fencing")
    group.env[CHAINS_ENV] = f"20,{args.nodes},{args.per_run}"
    try:
        group.start_worker("w0", queues=QUEUES)
        log(f"  {side}: warm-up, then 1 x {args.nodes} nodes on one worker")
        one = drive(group, tree, chain_id(args.nodes), 1, warm=True)
        group.start_worker("w1", queues=QUEUES)
        log(f"  {side}: {args.runs} x {args.per_run} nodes on two workers")
        many = drive(group, tree, chain_id(args.per_run), args.runs, warm=False)
    finally:
        group.close()
    return {"one": args.nodes / one["seconds"], "many": args.runs * args.per_run / many["seconds"],
            "tokens": one["tokens"] + many["tokens"], "workers_file": one["workers_file"],
            "script_us": one["script_us"],
            "commands_per_tick": {k: v / args.nodes for k, v in sorted(one["commands"].items())}}


# -- the driver (``--drive``): runs in the tree measured --------------------------------------------------


def driver(workflow: str, runs: int, warm: bool) -> int:
    from datetime import datetime

    import workers
    from workers.client import Client

    client = Client()
    r = client.backend.client
    done = client.backend.keys.by_status("completed")

    def go(wf: str, n: int) -> tuple[float, list[str]]:
        t0 = time.time()
        ids = [client.start(wf) for _ in range(n)]
        deadline = time.monotonic() + 900
        for rid in ids:  # a ZSCORE every 5 ms, as celery_ticks.py polls
            while r.zscore(done, rid) is None:
                if time.monotonic() > deadline:
                    state = client.get_state(rid)
                    raise RuntimeError(f"{wf} run {rid} is {state.status.value}: {state.error}")
                time.sleep(0.005)
        end = max(datetime.fromisoformat(client.get_state(rid).updated_at).timestamp() for rid in ids)
        return end - t0, ids

    def stats() -> dict[str, int]:
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in r.info("commandstats").items()}

    def script_usec() -> tuple[int, int]:
        """Calls and server time (µs) of EVALSHA: the commit and claim scripts, the fencing in them."""
        row = r.info("commandstats").get("cmdstat_evalsha", {})
        return int(row.get("calls", 0)), int(row.get("usec", 0))

    if warm:
        go(chain_id(20), 5)
    before, (calls0, usec0) = stats(), script_usec()
    secs, ids = go(workflow, runs)
    after, (calls1, usec1) = stats(), script_usec()
    # Every command of the server (runs in db 0, broker in db 1) over the timed runs, but this
    # driver's polling (ZSCORE) and INFO: what the workers, the broker and the starts cost.
    cmds = {k: v - before.get(k, 0) for k, v in after.items() if k not in ("zscore", "info") and v - before.get(k, 0)}
    tokens = sum(1 for rid in ids if r.hget(client.backend.keys.run(rid), "g") is not None)
    script_us = (usec1 - usec0) / max(1, calls1 - calls0)
    print(json.dumps({"seconds": secs, "tokens": tokens, "workers_file": workers.__file__, "commands": cmds,
                      "script_us": script_us}))
    client.close()
    return 0


# -- the table -------------------------------------------------------------------------------------------


def table(out: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [f"fencing benchmark: current tree {ROOT} vs baseline {out['baseline_sha'][:10]} ({out['baseline_why']})",
             f"1 run x {args.nodes} nodes on one worker; {args.runs} runs x {args.per_run} nodes on two workers; "
             "solo pool, broker and runs on one redis-server (no AOF)", ""]
    lines.append(f"{'round':8}{'order':>20}{'1 run: cur / base (ticks/s)':>32}{'ratio':>8}"
                 f"{'many: cur / base (ticks/s)':>32}{'ratio':>8}")
    for i, r in enumerate(out["rounds"], 1):
        c, b = r["current"], r["baseline"]
        lines.append(f"{i:<8}{r['order']:>20}{c['one']:>20,.0f} / {b['one']:<9,.0f}{c['one'] / b['one']:>8.3f}"
                     f"{c['many']:>20,.0f} / {b['many']:<9,.0f}{c['many'] / b['many']:>8.3f}")
    m1, m2 = out["median_ratio_one"], out["median_ratio_many"]
    lines.append(f"{'median':8}{'':>20}{'':>32}{m1:>8.3f}{'':>32}{m2:>8.3f}")
    lines.append("")
    verdict = "met" if min(m1, m2) >= TARGET_RATIO else "NOT met"
    lines.append(f"target: current/baseline >= {TARGET_RATIO} on both: {verdict}")
    for side in ("current", "baseline"):
        per = out["rounds"][-1][side]["commands_per_tick"]
        lines.append(f"Redis commands per tick, 1 run, {side} ({sum(per.values()):.2f}): "
                     + ", ".join(f"{k} {v:.2f}" for k, v in per.items() if v >= 0.01))
    us = {side: statistics.median(r[side]["script_us"] for r in out["rounds"]) for side in ("current", "baseline")}
    lines.append(f"Redis server time per EVALSHA (the commit script), median of rounds: "
                 f"current {us['current']:.1f} µs, baseline {us['baseline']:.1f} µs "
                 f"({us['current'] / us['baseline']:.2f}x)")
    lines.append(f"runs carrying a fencing token (field g): current {out['tokens_current']}, "
                 f"baseline {out['tokens_baseline']}")
    lines.append(f"workers imported from: current {out['files']['current']}; baseline {out['files']['baseline']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", help="git ref of the tree without fencing (default: see above)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=2000, help="nodes of the one long run")
    parser.add_argument("--runs", type=int, default=100, help="runs of --per-run nodes on two workers")
    parser.add_argument("--per-run", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--drive", metavar="WORKFLOW", help=argparse.SUPPRESS)
    parser.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        return driver(args.drive, args.runs, args.warm)

    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from support.redis_server import RedisServer

    ref, why = baseline_ref(args.baseline)
    log(f"baseline: {why}")
    out: dict[str, Any] = {"baseline_ref": ref, "baseline_why": why, "rounds": [], "files": {}}
    with tempfile.TemporaryDirectory(prefix="fencing-bench-") as tmp, Worktree(ref, Path(tmp)) as wt, \
            RedisServer(Path(tmp) / "redis") as server:
        out["baseline_sha"] = wt.sha
        trees = {"current": ROOT, "baseline": wt.path}
        for i in range(args.rounds):
            order = ["current", "baseline"] if i % 2 == 0 else ["baseline", "current"]
            log(f"round {i + 1}/{args.rounds}: {' then '.join(order)}")
            row: dict[str, Any] = {"order": " > ".join(order)}
            for side in order:
                row[side] = measure_tree(side, trees[side], server, Path(tmp) / f"r{i}-{side}", args)
                out["files"][side] = row[side]["workers_file"]
            out["rounds"].append(row)
            log(f"  1 run: {row['current']['one'] / row['baseline']['one']:.3f}x; "
                f"many: {row['current']['many'] / row['baseline']['many']:.3f}x")
    rounds = out["rounds"]
    out["median_ratio_one"] = statistics.median(r["current"]["one"] / r["baseline"]["one"] for r in rounds)
    out["median_ratio_many"] = statistics.median(r["current"]["many"] / r["baseline"]["many"] for r in rounds)
    out["tokens_current"] = sum(r["current"]["tokens"] for r in rounds)
    out["tokens_baseline"] = sum(r["baseline"]["tokens"] for r in rounds)
    print(json.dumps(out, indent=2, default=str) if args.json else table(out, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
elif os.environ.get(CHAINS_ENV):  # imported by a benchmark worker (ABSTRACTRUNTIME_IMPORTS=fencing)
    _register_chains()
