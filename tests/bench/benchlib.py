"""Not a script: what the benchmark scripts share (progress lines, percentiles)."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from typing import Any


def log(msg: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    print(msg, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0 to 1) of ``values``, nearest rank."""
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def wait_completed(client: Any, ids: list[str], *, poll_s: float = 0.005, timeout_s: float = 600,
                   what: str = "") -> float:
    """Wait until every run of ``ids`` completed (a ``ZSCORE`` of the completed index each
    ``poll_s``: cheap, where following the events stream would take CPU from the workers), and
    return when the last one was committed (epoch s). RuntimeError naming a run that did not."""
    r = client.backend.client
    done_index = client.backend.keys.by_status("completed")
    deadline = time.monotonic() + timeout_s
    for run_id in ids:
        while r.zscore(done_index, run_id) is None:
            if time.monotonic() > deadline:
                state = client.get_state(run_id)
                raise RuntimeError(f"{what}run {run_id} is {state.status.value}: {state.error}")
            time.sleep(poll_s)
    return max(datetime.fromisoformat(client.get_state(r_id).updated_at).timestamp() for r_id in ids)
