"""LangGraph on this machine, in the shapes of our own benchmark, for comparison.

A script, not a test. LangGraph is not one of our dependencies: install it in a separate
virtualenv, then run the script with that virtualenv's Python from the repository root::

    python3 -m venv /work/venv-cmp
    /work/venv-cmp/bin/pip install dbos langgraph langgraph-checkpoint-postgres "psycopg[binary]"
    /work/venv-cmp/bin/python tests/bench/cmp_langgraph.py [--rounds 3] [--threads 8] [--json] [--dsn URL]

LangGraph 1.x is run as its docs run it durably: a ``PostgresSaver`` checkpointer (on a
``psycopg_pool.ConnectionPool``, with ``setup()`` once) and ``invoke(..., durability="sync")``,
so every super-step is written before the next one starts. ``--dsn`` (a ``postgresql://``
URL) names a database to connect to; the script drops and creates ``bench_langgraph`` there
at each start, so every run begins clean. Shapes (each run has its own ``thread_id``):

* ``chain_1x2000`` / ``chain_200x20``: a node that adds 1 to a counter and routes back to
  itself through a conditional edge until it has run N times (one super-step per node);
* ``tools_1x500`` / ``tools_200x10``: nodes ``call`` -> ``check`` looping: ``call`` runs the
  tool ``quick(i) -> i`` (no I/O) and stores the result in the state, ``check`` appends it to
  the results and loops back until N calls; one tool call is two checkpointed super-steps.

LangGraph runs in-process, so the 200-run shapes invoke the graphs from a thread pool of
``--threads`` workers. Each shape gives steps per second (nodes, or tool calls, / wall time,
from submitting the first run to the completion of the last), the median of ``--rounds``,
after 5 small warm-up runs of each graph. Progress goes to stderr, a table (or with
``--json`` one JSON object) to stdout. Exit code 3: LangGraph is not installed or PostgreSQL
is unreachable (skipped).
"""

from __future__ import annotations

import argparse
import json
import operator
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, TypedDict

from cmplib import INSTALL, log, recreate_database, skip
from cmplib import parser as cmplib_parser

DB_NAME = "bench_langgraph"
#: shape -> (graph, runs, nodes or tool calls per run)
PLAN = {"chain_1x2000": ("chain", 1, 2000), "chain_200x20": ("chain", 200, 20),
        "tools_1x500": ("tools", 1, 500), "tools_200x10": ("tools", 200, 10)}


class ChainState(TypedDict):
    i: int
    n: int


class ToolState(TypedDict):
    i: int
    n: int
    result: int
    results: Annotated[list[int], operator.add]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cmplib_parser("LangGraph checkpointed steps per second, for comparison.")
    parser.add_argument("--threads", type=int, default=8, help="thread pool size for the 200-run shapes")
    return parser.parse_args(argv)


def check_imports() -> str:
    """The installed LangGraph version, or exit 3 when a needed package cannot be imported."""
    try:
        import langgraph.checkpoint.postgres  # noqa: F401
        import langgraph.graph  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        skip(f"langgraph is not installed here: {INSTALL} (skipped)")
    from importlib.metadata import version

    return version("langgraph")


def quick(i: int) -> int:
    """The tool: returns its argument, no I/O."""
    return i


def build_graphs(checkpointer: Any) -> dict[str, Any]:
    from langgraph.graph import END, START, StateGraph

    chain = StateGraph(ChainState)
    chain.add_node("step", lambda state: {"i": state["i"] + 1})
    chain.add_edge(START, "step")
    chain.add_conditional_edges("step", lambda state: "step" if state["i"] < state["n"] else END)

    tools = StateGraph(ToolState)
    tools.add_node("call", lambda state: {"result": quick(state["i"])})
    tools.add_node("check", lambda state: {"results": [state["result"]], "i": state["i"] + 1})
    tools.add_edge(START, "call")
    tools.add_edge("call", "check")
    tools.add_conditional_edges("check", lambda state: "call" if state["i"] < state["n"] else END)
    return {"chain": chain.compile(checkpointer=checkpointer), "tools": tools.compile(checkpointer=checkpointer)}


def invoke(graph: Any, kind: str, n: int, thread_id: str | None = None) -> None:
    supersteps = n if kind == "chain" else 2 * n
    config = {"configurable": {"thread_id": thread_id or uuid.uuid4().hex}, "recursion_limit": supersteps + 10}
    state = graph.invoke({"i": 0, "n": n}, config, durability="sync")
    assert state["i"] == n, state["i"]
    assert kind == "chain" or state["results"] == list(range(n)), state["results"][:5]


def many_runs(pool: ThreadPoolExecutor, graph: Any, kind: str, runs: int, n: int) -> float:
    start = time.perf_counter()
    futures = [pool.submit(invoke, graph, kind, n) for _ in range(runs)]
    for future in futures:
        future.result()
    return runs * n / (time.perf_counter() - start)


def rows_per_call(graph: Any, conn_pool: Any) -> tuple[float, float]:
    """Checkpoints and checkpoint_writes rows one tool call adds (a 20-call run minus a 10-call run)."""
    counts = []
    for n in (10, 20):
        thread_id = f"count-{n}-{uuid.uuid4().hex}"
        invoke(graph, "tools", n, thread_id)
        with conn_pool.connection() as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM checkpoints WHERE thread_id = %s) AS c,"
                " (SELECT count(*) FROM checkpoint_writes WHERE thread_id = %s) AS w",
                (thread_id, thread_id),
            ).fetchone()
        counts.append((row["c"], row["w"]))
    return (counts[1][0] - counts[0][0]) / 10, (counts[1][1] - counts[0][1]) / 10


def measure(graphs: dict[str, Any], threads: int, rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {shape: [] for shape in PLAN}
    with ThreadPoolExecutor(max_workers=threads) as pool:
        log("warm-up: 5 runs of 10 steps of each graph")
        for kind in graphs:
            many_runs(pool, graphs[kind], kind, 5, 10)
        for r in range(1, rounds + 1):
            for shape, (kind, runs, n) in PLAN.items():
                if runs == 1:  # in the calling thread, like a direct call
                    start = time.perf_counter()
                    invoke(graphs[kind], kind, n)
                    samples[shape].append(n / (time.perf_counter() - start))
                else:
                    samples[shape].append(many_runs(pool, graphs[kind], kind, runs, n))
            log(f"round {r}/{rounds}: " + ", ".join(f"{k} {v[-1]:.0f} steps/s" for k, v in samples.items()))
    return {shape: round(statistics.median(values), 1) for shape, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    version = check_imports()
    url = recreate_database(args.dsn, DB_NAME)
    log(f"langgraph {version}, checkpoints in {url}, {args.threads} threads")
    from langgraph.checkpoint.postgres import PostgresSaver
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool

    kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    with ConnectionPool(url, max_size=args.threads, kwargs=kwargs) as conn_pool:
        checkpointer = PostgresSaver(conn_pool)
        checkpointer.setup()
        graphs = build_graphs(checkpointer)
        shapes = measure(graphs, args.threads, args.rounds)
        per_call = rows_per_call(graphs["tools"], conn_pool)
    notes = (
        f"PostgresSaver on a ConnectionPool, durability='sync'; chain: 1 super-step per node; tools: "
        f"'call' then 'check', 2 super-steps per tool call, measured {per_call[0]:g} checkpoints and "
        f"{per_call[1]:g} checkpoint_writes rows per call; 200-run shapes from {args.threads} threads"
    )
    if args.json:
        print(json.dumps({"system": "langgraph", "version": version, "shapes": shapes, "notes": notes}))
    else:
        print(f"langgraph {version}: steps/s (median)")
        print("\n".join(f"  {shape:<14} {value:>9.1f}" for shape, value in shapes.items()) + f"\nnotes: {notes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
