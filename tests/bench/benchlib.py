"""Not a script: what the benchmark scripts share (progress lines, percentiles)."""

from __future__ import annotations

import sys


def log(msg: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    print(msg, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0 to 1) of ``values``, nearest rank."""
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]
