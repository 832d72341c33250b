"""Inline effects with continuation (``docs/performance.md``): a task runs its run's next steps
itself, up to a budget, instead of sending each through the broker.

On by default (``steps_per_task`` 16; 1 turns it off). Inside a tick, wake or effect task, the
messages the engine sends for that task's run are kept here instead of being published:

* a tick with no countdown (the next node);
* an effect the tick asked for, when it may run inline: its tools were all registered
  ``inline=True``, or its kind is in ``inline_effects``.

and the task runs them one after the other, exactly as their own tasks would (the same engine
calls with the same arguments: the same commits, ledger records, idempotency keys, leases and
fencing tokens), until ``steps_per_task`` steps or ``task_budget_ms`` milliseconds have gone by.
What is left then is published as usual, so a long run never holds a worker: others' messages
queued meanwhile run before its next step.

A crash between a commit and the step run inline loses no work: the step's message was never
in the broker, but its commit left the run's lease, which the sweep finds expired and sends
again (one lease period later, as for a message lost by a broker). An inline effect that
raises or fails follows the effect policy exactly as on its queue: it is the same code.
An inline tool that blocks is not cut short (Celery's soft time limits do not reach it): keep
``inline=True`` for fast, local tools, and LLM calls and slow tools on their queues.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import logs, metrics

__all__ = ["Continuation"]

#: The logger of the tasks' outcome lines (``workers/app.py``): inline steps log theirs there too.
_outcomes = logging.getLogger("workers.app")


class _Frame:
    def __init__(self, run_id: str, deadline: float) -> None:
        self.run_id, self.deadline = run_id, deadline
        self.kept: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.done = 0  # steps run


class Continuation:
    """A dispatcher around the real one: the follow-ups of the current task's run are kept and
    run in the task (:meth:`run`) while the budget lasts, everything else passes through."""

    def __init__(self, inner: Any, *, steps: int, budget_ms: int) -> None:
        self.inner, self.steps, self.budget_s = inner, steps, budget_ms / 1000
        self._local = threading.local()
        self.inline_steps = 0  # steps this process ran inline (tests, benchmarks)

    def _frame_for(self, run_id: str, countdown: float) -> _Frame | None:
        frame: _Frame | None = getattr(self._local, "frame", None)
        return frame if frame is not None and frame.run_id == run_id and not countdown else None

    def keeps(self, run_id: str) -> bool:
        """Whether this task would run a step of ``run_id`` it asks for now (budget left)."""
        frame = self._frame_for(run_id, 0.0)
        return frame is not None and frame.done + len(frame.kept) < self.steps and time.monotonic() < frame.deadline

    def tick(self, run_id: str, version: int | None, *, countdown: float = 0.0, **kw: Any) -> None:
        frame = self._frame_for(run_id, countdown)
        if frame is None:
            self.inner.tick(run_id, version, countdown=countdown, **kw)
        else:
            frame.kept.append(("tick", (run_id, version), {"countdown": countdown, **kw}))

    def effect(self, kind: str, run_id: str, version: int | None, key: str, attempt: int, *,
               countdown: float = 0.0, inline: bool = False, **kw: Any) -> None:
        frame = self._frame_for(run_id, countdown) if inline else None
        if frame is None:
            self.inner.effect(kind, run_id, version, key, attempt, countdown=countdown, **kw)
        else:
            frame.kept.append(("effect", (kind, run_id, version, key, attempt), {"countdown": countdown, **kw}))

    def wake(self, *args: Any, **kw: Any) -> None:
        self.inner.wake(*args, **kw)

    def flow(self, **kw: Any) -> None:
        self.inner.flow(**kw)

    def __getattr__(self, name: str) -> Any:  # what else the real dispatcher offers (the stub's clock...)
        return getattr(self.inner, name)

    def run(self, engine: Any, run_id: str, first: Callable[[], Any]) -> Any:
        """Run a task's first step, then its run's kept steps while the budget lasts; what the
        first step returned, the task's own outcome (each step after it logs and counts its own;
        a task nested in another, as the stub delivers them, just runs)."""
        if getattr(self._local, "frame", None) is not None or not run_id:
            return first()
        frame = self._local.frame = _Frame(run_id, time.monotonic() + self.budget_s)
        try:
            frame.done = 1  # (the first step, running)
            first_result = first()
            while frame.kept:
                what, args, kw = frame.kept.pop(0)
                if frame.done >= self.steps or time.monotonic() >= frame.deadline:
                    self._publish(what, args, kw)
                    continue
                frame.done += 1  # (counted while it runs, as the first one)
                self.inline_steps += 1
                result = None
                try:  # its own outcome line, "inline tick run=... -> next", as a task's
                    with logs.task_outcome(_outcomes, f"inline {what}", run_id, attempt=kw.get("attempt", 1)
                                           ) as outcome:
                        if what == "tick":
                            result = engine.tick(args[0], args[1], kw.get("attempt", 1), kw.get("token"))
                        else:
                            result = engine.effect(*args[1:], kw.get("token"))
                        outcome.result = result
                finally:
                    metrics.inline_step(what, kw.get("workflow"), result)
            return first_result
        except BaseException:
            for what, args, kw in frame.kept:  # what the failed step had kept still goes out
                self._publish(what, args, kw)
            raise
        finally:
            self._local.frame = None
            engine.backend.drop_loaded()  # what the last commit kept for a next step not run here

    def _publish(self, what: str, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
        if what == "tick":
            self.inner.tick(*args, **kw)
        else:
            self.inner.effect(*args, **kw)
