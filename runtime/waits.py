"""Which outside action may end which wait (the rule the Celery driver enforces).

A wait is ended only by what it waits for: an answer ends a person's question, an event
its key, the clock a timer, a child's end its parent's wait. Anything else is refused with
:class:`~runtime.errors.WaitNotEnded`, naming the run, what it waits for and since when,
before anything is written. An operator who wants a timer skipped says so explicitly
(``abstractruntime wake RUN_ID --now --reason TEXT``), and that is recorded in the ledger.

The in-process :class:`~runtime.Runtime` keeps the 0.2.0 behaviour (``resume`` with
``wait_key=None`` or on a wait with no key goes through); ``docs/celery.md`` says so.
"""

from __future__ import annotations

from typing import Literal

from .errors import RunNotWaiting, WaitKeyMismatch, WaitNotEnded
from .models import RunState, RunStatus, WaitReason, WaitState
from .waitset import describe_set, is_wait_set

__all__ = ["WaitAction", "describe_wait", "check_wait_ends"]

#: What someone outside the run tries: answer a question, resume by key, emit a key's event,
#: or (an operator) wake a sleeping run before its time.
WaitAction = Literal["respond", "resume", "emit", "wake"]

#: Waits that a key delivered from outside may end (``resume`` / ``emit``).
_KEYED = (WaitReason.EVENT, WaitReason.USER, WaitReason.JOB)


def describe_wait(wait: WaitState) -> str:
    """What a run waits, in a few words after "waits": ``until 2030-01-01T00:00:00+00:00 (a timer)``,
    ``for event 'order:17'``..."""
    if is_wait_set(wait):
        return describe_set(wait)
    reason = WaitReason(wait.reason)
    if reason == WaitReason.UNTIL:
        return f"until {wait.until} (a timer)"
    if reason == WaitReason.USER:
        prompt = wait.prompt if wait.prompt is None or len(wait.prompt) <= 60 else wait.prompt[:57] + "..."
        return f"for a person's answer to {prompt!r}" if prompt else "for a person's answer"
    if reason == WaitReason.SUBWORKFLOW:
        child = (wait.details or {}).get("sub_run_id")
        return f"for child run '{child}' to end" if child else f"for a child run ({wait.wait_key})"
    return f"for {reason.value} '{wait.wait_key}'"


def check_wait_ends(run: RunState, action: WaitAction, wait_key: str | None = None) -> WaitState:
    """Return the run's wait if ``action`` (with ``wait_key``) may end it; raise otherwise.

    Raises :class:`RunNotWaiting` when the run does not wait, :class:`WaitKeyMismatch` when a
    resume or an event names another key, and :class:`WaitNotEnded` when the action cannot
    end this kind of wait at all. Changes nothing.
    """
    w = run.waiting
    if run.status != RunStatus.WAITING or w is None:
        raise RunNotWaiting(f"Run '{run.run_id}' is not waiting (status={RunStatus(run.status).value})",
                            run_id=run.run_id, status=run.status)
    reason = WaitReason(w.reason)
    since = run.updated_at
    what = describe_wait(w)

    def refuse(hint: str) -> WaitNotEnded:
        return WaitNotEnded(run_id=run.run_id, action=action, reason=reason.value, wait_key=w.wait_key,
                            until=w.until, since=since, waits_for=what, hint=hint)

    if is_wait_set(w):  # named waits: which one a delivery is for is runtime.waitset.target_of's call
        if action == "wake":
            raise refuse("a named wait ends by its answer or its deadline; answer it, or cancel the run")
        return w
    if action == "wake":
        if reason != WaitReason.UNTIL:
            raise refuse("only a run waiting until a time can be woken")
        return w
    if reason == WaitReason.UNTIL:
        raise refuse(f"only the clock ends a timer, or an operator: abstractruntime wake {run.run_id} "
                     "--now --reason TEXT")
    if reason == WaitReason.SUBWORKFLOW:
        raise refuse("it resumes by itself when that child run ends (cancel the child to fail it)")
    if action == "respond":
        if reason != WaitReason.USER:
            raise refuse(f"respond answers only a person's question; deliver this with resume --wait-key "
                         f"'{w.wait_key}' or emit '{w.wait_key}'")
        return w
    if reason not in _KEYED:  # pragma: no cover - every reason is handled above
        raise refuse("no outside action ends this wait")
    if wait_key is None:
        raise refuse(f"{action} needs the run's wait key ('{w.wait_key}')")
    if wait_key != w.wait_key:
        raise WaitKeyMismatch(run_id=run.run_id, expected=w.wait_key, got=wait_key,
                              context=f"run '{run.run_id}' waits {what} since {since}")
    return w
