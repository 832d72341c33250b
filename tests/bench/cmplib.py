"""Not a script: what ``cmp_dbos.py`` and ``cmp_langgraph.py`` share (their options, skipping
with exit 3, a clean PostgreSQL database). Standard library only, and psycopg when called."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

#: Exit code of a comparison that cannot run here (``worker_setups.py`` reports it as skipped).
SKIPPED = 3
INSTALL = 'pip install dbos langgraph langgraph-checkpoint-postgres "psycopg[binary]"'
SHAPES = ("chain_1x2000", "chain_200x20", "tools_1x500", "tools_200x10")


def parser(description: str) -> argparse.ArgumentParser:
    """The options both scripts take (a script adds its own)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    p.add_argument("--rounds", type=int, default=3, help="rounds per shape; the median is reported")
    p.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres",
                   help="PostgreSQL URL used to create the bench database")
    return p


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def skip(message: str) -> NoReturn:
    log(message)
    sys.exit(SKIPPED)


def recreate_database(dsn: str, name: str) -> str:
    """Drop and create database ``name`` through ``dsn``; return a URL to it (exit 3 when
    PostgreSQL cannot be reached)."""
    import psycopg

    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        skip(f"PostgreSQL is unreachable at {dsn}: {reason} (skipped)")
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))
