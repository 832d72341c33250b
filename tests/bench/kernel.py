"""Kernel throughput benchmark: in-process steps per second of ``Runtime.tick``.

A script, not a test (pytest does not collect this folder: no ``test_`` prefix, no
``__init__.py``, no test functions). Run it from the repository root::

    .venv/bin/python tests/bench/kernel.py [--sizes 200,2000] [--repeat 3] [--json]
        [--baseline-repeat 1] [--dir PATH] [--only effect/memory,effect/json] [--no-warmup]

Two workloads, each driven to completion by one ``Runtime.tick(max_steps=N + 1)`` call:

* node chain: N nodes, each a pure transition to the next; the last one completes;
* effect chain: N nodes, each requesting a TOOL_CALLS effect (``result_key="last"``) that a
  custom handler completes at once, then a final node that completes. Each effect step
  runs the whole effect path: idempotency key, lookup of a prior result by key,
  ``started`` + ``completed`` ledger records, state save.

Four store combinations: in memory, in memory hash-chained, JSON files (default fsync,
in a temp folder), JSON files hash-chained. A baseline runs the effect chain with the
ledger wrapped so that it exposes only ``append`` and ``list``: the runtime then scans
the whole ledger for every effect, as the reference implementation did.

Steps/s is N / wall time of the ``tick`` call (``start()`` excluded), best of ``--repeat``
runs (``--baseline-repeat``, default 1, for the baseline rows: their cost grows as N², and
one 2000-step baseline run takes about a minute). Every run is checked (status completed,
ledger length, final vars, hash chain) and the script aborts with a message if one is wrong.
Progress goes to stderr, one line per combination.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ``python tests/bench/kernel.py`` puts tests/bench, not the repository root, on sys.path.
_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from runtime import (  # noqa: E402
    Effect,
    EffectOutcome,
    EffectType,
    HashChainedLedgerStore,
    InMemoryLedgerStore,
    InMemoryRunStore,
    RunStatus,
    Runtime,
    StepPlan,
    WorkflowSpec,
    verify_ledger_chain,
)
from stores import JsonFileRunStore, JsonlLedgerStore  # noqa: E402

#: Effect steps/s the effect chain must reach at TARGET_SIZE steps, per store family.
TARGET_SIZE = 2000
TARGET_EFFECT_RATE = {"memory": 20_000.0, "json": 1_000.0}
#: Largest acceptable drop of steps/s from the smallest to the largest N, in percent.
TARGET_MAX_DROP_PCT = 10.0


class BenchError(RuntimeError):
    """A run did not end as expected: the numbers would be meaningless."""


# -- workflows -----------------------------------------------------------------------------------


def _goto(node_id: str, next_node: str) -> Callable[[Any, Any], StepPlan]:
    def handler(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id=node_id, next_node=next_node)

    return handler


def _finish(node_id: str, output: dict[str, Any]) -> Callable[[Any, Any], StepPlan]:
    def handler(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id=node_id, complete_output={**output, "last": run.vars.get("last")})

    return handler


def _request(node_id: str, i: int, next_node: str) -> Callable[[Any, Any], StepPlan]:
    def handler(run: Any, ctx: Any) -> StepPlan:
        effect = Effect(type=EffectType.TOOL_CALLS, payload={"i": i}, result_key="last")
        return StepPlan(node_id=node_id, effect=effect, next_node=next_node)

    return handler


def node_chain(n: int) -> WorkflowSpec:
    """n0 -> n1 -> ... -> n{n-1} (completes): n steps, one ledger record."""
    nodes: dict[str, Callable[[Any, Any], StepPlan]] = {}
    for i in range(n - 1):
        nodes[f"n{i}"] = _goto(f"n{i}", f"n{i + 1}")
    nodes[f"n{n - 1}"] = _finish(f"n{n - 1}", {"steps": n})
    return WorkflowSpec(workflow_id=f"bench_node_chain_{n}", entry_node="n0", nodes=nodes)


def effect_chain(n: int) -> WorkflowSpec:
    """e0 .. e{n-1}, each one effect, then ``done``: n + 1 steps, 2n + 1 ledger records."""
    nodes: dict[str, Callable[[Any, Any], StepPlan]] = {}
    for i in range(n):
        nodes[f"e{i}"] = _request(f"e{i}", i, f"e{i + 1}" if i + 1 < n else "done")
    nodes["done"] = _finish("done", {"steps": n})
    return WorkflowSpec(workflow_id=f"bench_effect_chain_{n}", entry_node="e0", nodes=nodes)


def tool_handler(run: Any, effect: Effect) -> EffectOutcome:
    """The benchmark's TOOL_CALLS handler: completes at once with ``{"i": n}``."""
    return EffectOutcome.completed({"i": effect.payload["i"]})


# -- stores --------------------------------------------------------------------------------------


class ScanOnlyLedger:
    """A reference-style ledger: only ``append`` and ``list``, no ``find_effect_result``.

    Without the index method the runtime looks a prior result up by scanning ``list()``
    for every effect, so each effect step costs O(ledger length).
    """

    __slots__ = ("_inner",)

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def append(self, record: Any) -> None:
        self._inner.append(record)

    def list(self, run_id: str) -> list[dict[str, Any]]:
        return self._inner.list(run_id)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Combo:
    workload: str  # "node" | "effect"
    store: str  # "memory" | "json"
    chained: bool = False
    baseline: bool = False

    @property
    def store_label(self) -> str:
        label = self.store + ("+chain" if self.chained else "")
        return f"baseline {label} (scan)" if self.baseline else label

    @property
    def label(self) -> str:
        return f"{self.workload} chain / {self.store_label}"

    @property
    def key(self) -> str:
        """Short name for ``--only``: ``effect/memory``, ``node/json+chain``, ``effect/baseline-json``."""
        return f"{self.workload}/{'baseline-' if self.baseline else ''}{self.store}{'+chain' if self.chained else ''}"


COMBOS: list[Combo] = [
    Combo(workload, store, chained)
    for workload in ("node", "effect")
    for store in ("memory", "json")
    for chained in (False, True)
] + [Combo("effect", "memory", baseline=True), Combo("effect", "json", baseline=True)]


@contextmanager
def open_stores(combo: Combo, tmp_root: str | None) -> Iterator[tuple[Any, Any]]:
    """A fresh (run store, ledger store) pair for one run; a JSON folder is deleted afterwards."""
    if combo.store == "memory":
        run_store: Any = InMemoryRunStore()
        ledger: Any = InMemoryLedgerStore()
        yield run_store, _wrap(ledger, combo)
        return
    with tempfile.TemporaryDirectory(prefix="kernel-bench-", dir=tmp_root) as folder:
        run_store = JsonFileRunStore(folder)  # default fsync
        ledger = JsonlLedgerStore(folder)  # default fsync
        yield run_store, _wrap(ledger, combo)


def _wrap(ledger: Any, combo: Combo) -> Any:
    if combo.chained:
        ledger = HashChainedLedgerStore(ledger)
    if combo.baseline:
        ledger = ScanOnlyLedger(ledger)
        assert not hasattr(ledger, "find_effect_result")
    return ledger


# -- one run -------------------------------------------------------------------------------------


def run_once(combo: Combo, n: int, tmp_root: str | None) -> float:
    """Seconds one ``tick`` takes to drive an n-step run to completion (checked)."""
    wf = node_chain(n) if combo.workload == "node" else effect_chain(n)
    with open_stores(combo, tmp_root) as (run_store, ledger):
        rt = Runtime(
            run_store=run_store,
            ledger_store=ledger,
            effect_handlers={EffectType.TOOL_CALLS: tool_handler},
        )
        run_id = rt.start(workflow=wf)
        gc.collect()
        t0 = time.perf_counter()
        state = rt.tick(workflow=wf, run_id=run_id, max_steps=n + 1)
        elapsed = time.perf_counter() - t0
        _check(combo, n, rt, run_id, state)
    return elapsed


def _check(combo: Combo, n: int, rt: Runtime, run_id: str, state: Any) -> None:
    where = f"{combo.label}, N={n}"
    if state.status != RunStatus.COMPLETED:
        raise BenchError(
            f"{where}: run ended {RunStatus(state.status).value!r} at node {state.current_node!r} "
            f"(error: {state.error!r}), expected 'completed'"
        )
    stored = rt.get_state(run_id)
    if stored.status != RunStatus.COMPLETED:
        raise BenchError(f"{where}: stored run is {RunStatus(stored.status).value!r}, expected 'completed'")
    ledger = rt.get_ledger(run_id)
    expected = 1 if combo.workload == "node" else 2 * n + 1
    if len(ledger) != expected:
        raise BenchError(f"{where}: ledger has {len(ledger)} records, expected {expected}")
    if combo.workload == "effect":
        started = sum(1 for r in ledger if r.get("status") == "started")
        completed = sum(1 for r in ledger if r.get("status") == "completed")
        if started != n or completed != n + 1:
            raise BenchError(
                f"{where}: ledger has {started} started / {completed} completed records, expected {n} / {n + 1}"
            )
        if stored.vars.get("last") != {"i": n - 1}:
            raise BenchError(f"{where}: vars['last'] is {stored.vars.get('last')!r}, expected {{'i': {n - 1}}}")
        seq = (stored.vars.get("_runtime") or {}).get("effect_seq")
        if seq != n:
            raise BenchError(f"{where}: effect_seq is {seq!r}, expected {n}")
    if stored.output is None or stored.output.get("steps") != n:
        raise BenchError(f"{where}: output is {stored.output!r}, expected steps={n}")
    if combo.chained:
        report = verify_ledger_chain(ledger)
        if not report["ok"]:
            raise BenchError(f"{where}: hash chain does not verify: {report['errors'][:3]}")


# -- the benchmark -------------------------------------------------------------------------------


@dataclass
class Row:
    combo: Combo
    best_s: dict[int, float] = field(default_factory=dict)
    all_s: dict[int, list[float]] = field(default_factory=dict)

    def rate(self, n: int) -> float:
        return n / self.best_s[n]


def measure(combo: Combo, sizes: list[int], repeat: int, tmp_root: str | None, *, warmup: bool = True) -> Row:
    row = Row(combo)
    if warmup:
        run_once(combo, min(sizes), tmp_root)  # untimed: imports, caches, first file creation
    for n in sizes:
        times = [run_once(combo, n, tmp_root) for _ in range(repeat)]
        row.all_s[n] = times
        row.best_s[n] = min(times)
    return row


def drop_pct(row: Row, sizes: list[int]) -> float | None:
    lo, hi = min(sizes), max(sizes)
    if lo == hi:
        return None
    return (1.0 - row.rate(hi) / row.rate(lo)) * 100.0


def _ours_for(baseline: Combo) -> Combo:
    return Combo(baseline.workload, baseline.store, baseline.chained, baseline=False)


def evaluate(rows: list[Row], sizes: list[int]) -> list[dict[str, Any]]:
    """One result dict per row: rates, drop, ratio to baseline, targets and verdicts."""
    by_combo = {r.combo: r for r in rows}
    target_n = TARGET_SIZE if TARGET_SIZE in sizes else max(sizes)
    out = []
    for row in rows:
        c = row.combo
        res: dict[str, Any] = {
            "workload": c.workload,
            "store": c.store,
            "hash_chained": c.chained,
            "baseline": c.baseline,
            "label": c.label,
            "steps_per_s": {str(n): round(row.rate(n), 1) for n in sizes},
            "best_tick_s": {str(n): row.best_s[n] for n in sizes},
            "all_tick_s": {str(n): row.all_s[n] for n in sizes},
            "drop_pct": None,
            "ratio_ours_over_baseline": None,
            "targets": [],
        }
        drop = drop_pct(row, sizes)
        res["drop_pct"] = None if drop is None else round(drop, 1)
        if c.baseline:
            ours = by_combo.get(_ours_for(c))
            if ours is not None:
                res["ratio_ours_over_baseline"] = {str(n): round(ours.rate(n) / row.rate(n), 2) for n in sizes}
        else:
            if drop is not None:
                res["targets"].append(
                    {
                        "name": f"drop {min(sizes)}->{max(sizes)} <= {TARGET_MAX_DROP_PCT:g}%",
                        "ok": drop <= TARGET_MAX_DROP_PCT,
                    }
                )
            if c.workload == "effect":
                want = TARGET_EFFECT_RATE[c.store]
                res["targets"].append(
                    {
                        "name": f">= {want:,.0f} steps/s at N={target_n}",
                        "ok": row.rate(target_n) >= want,
                    }
                )
        out.append(res)
    return out


def environment(tmp_root: str | None) -> dict[str, Any]:
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_build": " ".join(platform.python_build()),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "date": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "json_store_dir": os.path.abspath(tmp_root or tempfile.gettempdir()),
        "fsync": True,
    }


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def render_table(
    env: dict[str, Any], results: list[dict[str, Any]], sizes: list[int], repeat: int, baseline_repeat: int
) -> str:
    lines = [
        "Kernel throughput: in-process steps/s (N / wall time of one Runtime.tick), "
        f"best of {repeat} (baseline rows: best of {baseline_repeat})",
        f"  python   {env['python']} ({env['python_build']})",
        f"  machine  {env['platform']}, {env['machine']}, {env['cpu_count']} CPUs",
        f"  date     {env['date']}",
        f"  JSON     files in {env['json_store_dir']} (fsync on)",
        "",
    ]
    size_cols = [f"N={n}" for n in sizes]
    header = ["workload", "store", *size_cols, "drop", "ours/base", "targets"]
    body: list[list[str]] = []
    for res in results:
        drop = res["drop_pct"]
        ratio = res["ratio_ours_over_baseline"]
        targets = res["targets"]
        body.append(
            [
                f"{res['workload']} chain",
                ("baseline " if res["baseline"] else "") + res["store"] + ("+chain" if res["hash_chained"] else ""),
                *(_fmt_rate(res["steps_per_s"][str(n)]) for n in sizes),
                "" if drop is None else f"{drop:+.1f}%",
                "" if not ratio else " / ".join(f"{ratio[str(n)]:.1f}x" for n in sizes),
                "; ".join(f"{'PASS' if t['ok'] else 'FAIL'} {t['name']}" for t in targets),
            ]
        )
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    right = set(range(2, 2 + len(sizes) + 2))  # numbers and drop right-aligned

    def fmt(cells: list[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    lines.append(fmt(header))
    lines.append(fmt(["-" * w for w in widths]))
    prev_workload = None
    for res, cells in zip(results, body):
        group = "baseline" if res["baseline"] else res["workload"]
        if prev_workload is not None and group != prev_workload:
            lines.append("")
        prev_workload = group
        lines.append(fmt(cells))
    lines.append("")
    lines.append(
        "drop: change of steps/s from the smallest to the largest N (+ = slower); target flat, "
        f"<= {TARGET_MAX_DROP_PCT:g}%."
    )
    lines.append(
        "baseline: effect chain with a ledger exposing only append/list, so every effect scans the "
        "ledger (reference behaviour);"
    )
    lines.append("          ours/base = steps/s of the indexed store / steps/s of the baseline, per N.")
    verdicts = [t for res in results for t in res["targets"]]
    failed = [f"{res['label']}: {t['name']}" for res in results for t in res["targets"] if not t["ok"]]
    lines.append(
        f"targets: {len(verdicts) - len(failed)}/{len(verdicts)} met"
        + ("" if not failed else "; missed: " + ", ".join(failed))
    )
    return "\n".join(lines)


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes wants comma-separated integers, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError("--sizes wants integers >= 1")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", type=parse_sizes, default=[200, 2000], help="comma-separated run lengths N (default 200,2000)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per size; the best is reported (default 3)")
    parser.add_argument(
        "--baseline-repeat",
        type=int,
        default=1,
        help="runs per size of the baseline rows, whose cost is O(N^2): one 2000-step run takes "
        "about a minute (default 1)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument(
        "--dir", default=None, help="folder for the JSON stores' temp folders (default: the system temp dir)"
    )
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated combinations to run, e.g. effect/memory,effect/json (keys: "
        + ", ".join(c.key for c in COMBOS)
        + ")",
    )
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up run (for profiling)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.baseline_repeat < 1:
        parser.error("--repeat and --baseline-repeat must be >= 1")
    sizes: list[int] = args.sizes
    combos = COMBOS
    if args.only:
        wanted = [k.strip() for k in args.only.split(",") if k.strip()]
        unknown = sorted(set(wanted) - {c.key for c in COMBOS})
        if unknown:
            parser.error(f"--only: unknown combination(s) {', '.join(unknown)}")
        combos = [c for c in COMBOS if c.key in wanted]

    env = environment(args.dir)
    rows: list[Row] = []
    t_all = time.perf_counter()
    try:
        for i, combo in enumerate(combos, 1):
            # One line per combination: its name now, its numbers when it is done.
            print(f"[{i:2d}/{len(combos)}] {combo.label:<40} ", end="", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            repeat = args.baseline_repeat if combo.baseline else args.repeat
            row = measure(combo, sizes, repeat, args.dir, warmup=not args.no_warmup)
            rows.append(row)
            rates = ", ".join(f"N={n}: {_fmt_rate(row.rate(n))}/s" for n in sizes)
            print(f"{rates}  ({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
    except BenchError as exc:
        print(f"\nkernel bench ABORTED: {exc}", file=sys.stderr)
        return 2
    print(f"done in {time.perf_counter() - t_all:.1f}s", file=sys.stderr, flush=True)

    results = evaluate(rows, sizes)
    if args.json:
        doc = {
            "benchmark": "kernel",
            "environment": env,
            "sizes": sizes,
            "repeat": args.repeat,
            "baseline_repeat": args.baseline_repeat,
            "targets": {
                "max_drop_pct": TARGET_MAX_DROP_PCT,
                "effect_steps_per_s": TARGET_EFFECT_RATE,
                "at_n": TARGET_SIZE if TARGET_SIZE in sizes else max(sizes),
            },
            "results": results,
        }
        print(json.dumps(doc, indent=2))
    else:
        print(render_table(env, results, sizes, args.repeat, args.baseline_repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
