"""DBOS on this machine, in the shapes of our own benchmark, for comparison.

A script, not a test. DBOS is not one of our dependencies: install it in a separate
virtualenv, then run the script with that virtualenv's Python from the repository root::

    python3 -m venv /work/venv-cmp
    /work/venv-cmp/bin/pip install dbos langgraph langgraph-checkpoint-postgres "psycopg[binary]"
    /work/venv-cmp/bin/python tests/bench/cmp_dbos.py [--rounds 3] [--json] [--dsn URL]

DBOS 3.x is started as its docs start it: ``DBOS(config=...)`` with its system database in
PostgreSQL, then ``DBOS.launch()``, and ``DBOS.destroy()`` at the end. ``--dsn`` (a
``postgresql://`` URL) names a database to connect to; the script drops and creates
``bench_dbos`` there at each start, so every run begins clean. A tool call is a
``@DBOS.step()`` ``quick(i) -> i`` (no I/O) called from a ``@DBOS.workflow()``:

* ``tools_1x500``: one workflow calling ``quick`` 500 times, called directly;
* ``tools_200x10``: 200 workflows of 10 calls, all started with ``DBOS.start_workflow``,
  then every handle waited for.

Each shape gives durable steps per second (step calls / wall time, from submitting the first
run to the completion of the last), the median of ``--rounds``, after 5 small warm-up runs.
The effect-free chain shapes are LangGraph's only here (``null``). Progress goes to stderr,
a table (or with ``--json`` one JSON object) to stdout. Exit code 3: DBOS is not installed or
PostgreSQL is unreachable (skipped).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

from cmplib import INSTALL, SHAPES, log, recreate_database, skip
from cmplib import parser as cmplib_parser

DB_NAME = "bench_dbos"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cmplib_parser("DBOS durable steps per second, for comparison.")
    return parser.parse_args(argv)


def check_imports() -> str:
    """The installed DBOS version, or exit 3 when DBOS or psycopg cannot be imported."""
    try:
        import dbos  # noqa: F401
        import psycopg  # noqa: F401
    except ImportError:
        skip(f"dbos is not installed here: {INSTALL} (skipped)")
    from importlib.metadata import version

    return version("dbos")


def launch(url: str) -> Callable[[int], int]:
    """Register the workflow and its step, then launch DBOS on ``url``; return the workflow."""
    from dbos import DBOS

    @DBOS.step()
    def quick(i: int) -> int:
        return i

    @DBOS.workflow()
    def tools(n: int) -> int:
        total = 0
        for i in range(n):
            total += quick(i)
        return total

    DBOS(config={"name": "cmp-dbos", "system_database_url": url, "log_level": "WARNING"})
    DBOS.launch()
    return tools


def one_run(tools: Callable[[int], int], n: int) -> float:
    start = time.perf_counter()
    total = tools(n)
    elapsed = time.perf_counter() - start
    assert total == n * (n - 1) // 2, total
    return n / elapsed


def many_runs(tools: Callable[[int], int], runs: int, n: int) -> float:
    from dbos import DBOS

    start = time.perf_counter()
    handles = [DBOS.start_workflow(tools, n) for _ in range(runs)]
    totals = [handle.get_result() for handle in handles]
    elapsed = time.perf_counter() - start
    assert totals == [n * (n - 1) // 2] * runs, totals[:3]
    return runs * n / elapsed


def count_steps(url: str) -> int:
    """Step outputs DBOS has stored so far (one row per completed step)."""
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM dbos.operation_outputs").fetchone()
    return int(row[0]) if row else 0


def measure(tools: Callable[[int], int], rounds: int) -> dict[str, float | None]:
    log("warm-up: 5 runs of 10 steps")
    many_runs(tools, 5, 10)
    samples: dict[str, list[float]] = {"tools_1x500": [], "tools_200x10": []}
    for r in range(1, rounds + 1):
        samples["tools_1x500"].append(one_run(tools, 500))
        samples["tools_200x10"].append(many_runs(tools, 200, 10))
        log(f"round {r}/{rounds}: " + ", ".join(f"{k} {v[-1]:.0f} steps/s" for k, v in samples.items()))
    medians: dict[str, float | None] = {shape: None for shape in SHAPES}
    medians.update({shape: round(statistics.median(values), 1) for shape, values in samples.items()})
    return medians


def print_table(version: str, shapes: dict[str, float | None], notes: str) -> None:
    print(f"dbos {version}: durable steps/s (median)")
    for shape, value in shapes.items():
        print(f"  {shape:<14} {'-' if value is None else f'{value:>9.1f}'}")
    print(f"notes: {notes}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    version = check_imports()
    url = recreate_database(args.dsn, DB_NAME)
    log(f"dbos {version}, system database {url}")
    tools = launch(url)
    try:
        shapes = measure(tools, args.rounds)
        expected = 5 * 10 + args.rounds * (500 + 200 * 10)
        stored = count_steps(url)
    finally:
        from dbos import DBOS

        DBOS.destroy()
    notes = (
        f"one @DBOS.step per tool call, checkpointed in PostgreSQL (dbos.operation_outputs: {stored} rows "
        f"for {expected} steps); tools_1x500 calls the workflow directly, tools_200x10 uses "
        "DBOS.start_workflow for all 200 then waits for every handle; chain shapes: LangGraph only"
    )
    if args.json:
        print(json.dumps({"system": "dbos", "version": version, "shapes": shapes, "notes": notes}))
    else:
        print_table(version, shapes, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
