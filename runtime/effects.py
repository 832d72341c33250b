"""Effect handlers: the built-in waits, and the adapter for both handler signatures."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ._clock import parse_iso
from .answers import InvalidAnswerSchema, check_schema
from .errors import InvalidTimeError
from .models import Effect, EffectOutcome, EffectType, RunState, WaitReason, WaitState
from .step import EffectHandler
from .waitset import handle_open_waits

__all__ = [
    "adapt_handler",
    "handle_wait_event",
    "handle_wait_until",
    "handle_ask_user",
    "builtin_wait_handlers",
]


def _wants_next_node(handler: Callable[..., Any]) -> bool:
    """True for ``(run, effect, default_next_node)`` handlers: 3+ positional parameters or ``*args``."""
    try:
        params = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return True
    positional = 0
    for p in params:
        if p.kind == p.VAR_POSITIONAL:
            return True
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 3


def adapt_handler(handler: Callable[..., EffectOutcome]) -> EffectHandler:
    """Accept both handler signatures; the arity is read once, here, not on every call.

    Adapting an adapted handler gives it back as it is (its ``__wrapped__`` shows the inner
    two-argument signature, which would otherwise wrap it a second time).
    """
    if getattr(handler, "_abstractruntime_adapted", False) or _wants_next_node(handler):
        return handler

    def two_args(run: RunState, effect: Effect, default_next_node: str | None) -> EffectOutcome:
        return handler(run, effect)

    two_args.__wrapped__ = handler  # type: ignore[attr-defined]
    two_args._abstractruntime_adapted = True  # type: ignore[attr-defined]
    return two_args


def _park(effect: Effect, default_next_node: str | None, reason: WaitReason, **fields: Any) -> EffectOutcome:
    """A waiting outcome that resumes at ``payload.resume_to_node``, else the plan's next node."""
    return EffectOutcome.waiting(WaitState(
        reason=reason, resume_to_node=effect.payload.get("resume_to_node") or default_next_node,
        result_key=effect.result_key, **fields))


def handle_wait_event(run: RunState, effect: Effect, default_next_node: str | None) -> EffectOutcome:
    """Park the run until an event with ``payload.wait_key`` arrives."""
    wait_key = effect.payload.get("wait_key")
    if not wait_key:
        return EffectOutcome.failed("wait_event requires payload.wait_key")
    return _park(effect, default_next_node, WaitReason.EVENT, wait_key=str(wait_key))


def handle_wait_until(run: RunState, effect: Effect, default_next_node: str | None) -> EffectOutcome:
    """Park the run until ``payload.until``; a time already passed completes at once (D4: parsed)."""
    until = effect.payload.get("until")
    if not until:
        return EffectOutcome.failed("wait_until requires payload.until")
    try:
        when = parse_iso(until)
    except InvalidTimeError as exc:
        return EffectOutcome.failed(str(exc))
    if when <= datetime.now(timezone.utc):
        return EffectOutcome.completed({"until": until, "ready": True})
    return _park(effect, default_next_node, WaitReason.UNTIL, until=str(until))


def handle_ask_user(run: RunState, effect: Effect, default_next_node: str | None) -> EffectOutcome:
    """Park the run with a question; the wait key defaults to ``user:{run_id}:{node}``.

    With ``payload.waits`` (a list) it opens a named wait set instead (``runtime/waitset.py``)."""
    if "waits" in effect.payload:
        return handle_open_waits(run, effect, default_next_node)
    prompt = effect.payload.get("prompt")
    if not prompt:
        return EffectOutcome.failed("ask_user requires payload.prompt")
    choices = effect.payload.get("choices")
    wait_key = effect.payload.get("wait_key") or f"user:{run.run_id}:{run.current_node}"
    schema = effect.payload.get("schema")
    if schema is not None:  # a typed answer (runtime/answers.py): the schema is checked as the wait opens
        try:
            check_schema(schema)
        except InvalidAnswerSchema as exc:
            return EffectOutcome.failed(f"ask_user: {exc}")
    return _park(effect, default_next_node, WaitReason.USER, wait_key=str(wait_key), prompt=str(prompt),
                 choices=list(choices) if isinstance(choices, list) else None,
                 allow_free_text=bool(effect.payload.get("allow_free_text", True)),
                 details={"schema": schema} if schema is not None else None)


def builtin_wait_handlers() -> dict[EffectType, EffectHandler]:
    """The waits every runtime knows; START_SUBWORKFLOW is added by the runtime that owns runs."""
    return {
        EffectType.WAIT_EVENT: handle_wait_event,
        EffectType.WAIT_UNTIL: handle_wait_until,
        EffectType.ASK_USER: handle_ask_user,
        EffectType.OPEN_WAITS: handle_open_waits,
    }
