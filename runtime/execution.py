"""What is executing now: the run, node and lease a node handler, tool or effect handler runs under.

The driver sets it around each node it runs and each effect attempt it executes, so that
code called from there can read it without a new parameter (node handlers and tools keep
their 0.2.0 signatures)::

    from runtime import current_execution

    def charge(amount: int) -> dict:
        ex = current_execution()
        # A downstream store that keeps the highest token it saw per run refuses a write
        # carrying an older one: a worker paused past its lease cannot write over the
        # worker that took over (docs/reliability.md, "Fencing tokens").
        payments.charge(amount, idempotency_key=ex.idempotency_key, fencing_token=ex.fencing_token)

Outside a driver (the single-process ``Runtime``, a test calling a tool directly) it is None.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["Execution", "current_execution", "executing"]


@dataclass(frozen=True)
class Execution:
    """The run, node and lease of the code running now."""

    run_id: str
    node_id: str | None
    #: The run's fencing token held by this worker: every grant of the run's lease adds one,
    #: and the run refuses a commit carrying an older one (:class:`~runtime.errors.StaleLease`).
    fencing_token: int
    #: An effect attempt's idempotency key (None while a node handler runs).
    idempotency_key: str | None = None
    #: An effect attempt's number, from 1 (1 while a node handler runs).
    attempt: int = 1


_current: ContextVar[Execution | None] = ContextVar("abstractruntime_execution", default=None)


def current_execution() -> Execution | None:
    """What is executing in this thread or task now, or None outside a driver."""
    return _current.get()


@contextmanager
def executing(execution: Execution) -> Iterator[Execution]:
    """Make ``execution`` current for the duration of the ``with`` block (drivers call this)."""
    token = _current.set(execution)
    try:
        yield execution
    finally:
        _current.reset(token)
