"""``abstractruntime stuck``: the runs the sweep found stuck, grouped by cause.

The list is what the stuck detector (``workers/stuck.py``, run by the recovery sweep) keeps in
Redis: index reads, no scan, no workflow code needed. Each run shows its cause (the ``explain``
code), since when, and the sentence ``explain`` gave; ``abstractruntime explain RUN_ID`` tells
what it says now.
"""

from __future__ import annotations

import re

import click

from ._common import EXIT_USAGE, CliError, State, _require_deployment, pass_state

__all__ = ["stuck", "parse_duration"]

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``10m``, ``2h`` or ``1d``; ValueError otherwise."""
    m = _DURATION.match(text or "")
    if m is None:
        raise ValueError(f"not a duration: {text!r} (examples: 30s, 10m, 2h, 1d)")
    return float(m[1]) * _UNITS[m[2].lower()]


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


@click.command()
@click.option("--older-than", "older_than", metavar="DURATION", default="0s", show_default=True,
              help="Only runs stuck at least this long (30s, 10m, 2h, 1d).")
@click.option("--cause", metavar="CODE", help="Only this cause (an explain code: NO_CONSUMER, WAITING_USER...).")
@click.option("--limit", type=click.IntRange(1), default=1000, show_default=True, help="Most runs per cause.")
@pass_state
def stuck(state: State, older_than: str, cause: str | None, limit: int) -> None:
    """Runs without progress past their cause's threshold, grouped by cause (found by the sweep)."""
    from ..stuck import CAUSES, stuck_runs

    try:
        seconds = parse_duration(older_than)
    except ValueError as exc:
        raise CliError(f"--older-than: {exc}", EXIT_USAGE) from None
    code = cause.strip().upper() if cause else None
    if code is not None and code not in CAUSES:
        raise CliError(f"--cause: unknown cause {cause!r}; one of {', '.join(CAUSES)}", EXIT_USAGE)
    _require_deployment(state)
    found = stuck_runs(state.client.backend, cause=code, older_than_s=seconds, limit=limit)

    def human() -> None:
        if not found["total"]:
            click.echo("no stuck runs" + (f" older than {older_than}" if seconds else ""))
            return
        for name, rows in found["causes"].items():
            click.echo(f"{name} ({len(rows)})")
            for row in rows:
                click.echo(f"  {row['run_id']}  {row.get('workflow_id') or '?'}  stuck {_ago(row['stuck_for_s'])}"
                           f"  {row.get('sentence') or ''}")
        click.echo("why, and what to do: abstractruntime explain RUN_ID")

    state.out(found, human)
