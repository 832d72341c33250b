"""What one commit moves in the cross-run indexes (a run state's index entries), and what a
thread knows of a run it read or wrote (version, chain head, entries, fencing token): the
small records :class:`~stores.redis.backend.RedisBackend` keeps between a load and a commit.
"""

from __future__ import annotations

from typing import NamedTuple

from runtime import RunState, RunStatus, WaitReason
from runtime._clock import epoch_ms
from runtime.waitset import is_wait_set, next_due_ms

__all__ = ["_Index", "_NO_INDEX", "_index_of", "_Known"]


class _Index(NamedTuple):
    """The index entries of one run state (what the commit script adds and removes)."""

    status: str
    workflow_id: str
    reason: str
    wait_key: str
    until_ms: str
    parent_run_id: str


_NO_INDEX = _Index("", "", "", "", "", "")


def _index_of(run: RunState) -> _Index:
    status = RunStatus(run.status)._value_
    w = run.waiting if status == "waiting" else None
    reason = WaitReason(w.reason)._value_ if w is not None else ""
    until = str(epoch_ms(w.until)) if w is not None and w.until and reason == "until" else ""
    if w is not None and is_wait_set(w):  # named waits: the next of their timers wakes the run
        due = next_due_ms(w)
        until = str(due) if due is not None else ""
    return _Index(status, run.workflow_id, reason, (w.wait_key or "") if w is not None else "", until,
                  run.parent_run_id or "")


class _Known(NamedTuple):
    version: int
    head: str
    entries: _Index
    #: The fencing token as this thread last read it or got it back from a commit.
    fence: int = 0
