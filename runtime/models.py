"""The data model: runs, plans, effects, waits and ledger records, each with a JSON round trip.

Every value here is JSON-serialisable through ``to_dict()`` and rebuilt by ``from_dict()``;
enums are ``str`` enums so a stored ``"waiting"`` compares equal to ``RunStatus.WAITING``.
Ledger records (:class:`StepRecord`, :class:`StepStatus`) are defined in
:mod:`runtime.records` and importable from here too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ._clock import utc_now_iso
from ._enums import enum_member, plain_value
from ._ids import new_id
from .errors import CorruptRecordError, InvalidRunId
from .records import StepRecord, StepStatus

__all__ = [
    "RunStatus",
    "WaitReason",
    "EffectType",
    "StepStatus",
    "Effect",
    "StepPlan",
    "WaitState",
    "RunState",
    "StepRecord",
    "EffectOutcome",
    "validate_run_id",
]


class RunStatus(str, Enum):
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """Completed, failed and cancelled runs never move again (cancelled: decision D1)."""
        return self in _TERMINAL


_TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})


class WaitReason(str, Enum):
    EVENT = "event"
    UNTIL = "until"
    USER = "user"
    JOB = "job"
    SUBWORKFLOW = "subworkflow"


class EffectType(str, Enum):
    WAIT_EVENT = "wait_event"
    WAIT_UNTIL = "wait_until"
    ASK_USER = "ask_user"
    LLM_CALL = "llm_call"
    TOOL_CALLS = "tool_calls"
    START_SUBWORKFLOW = "start_subworkflow"
    #: Several named waits at once, each with its deadline (``runtime/waitset.py``); not in 0.2.0.
    OPEN_WAITS = "open_waits"


@dataclass(frozen=True)
class Effect:
    """A side effect a node asks the runtime to perform."""

    type: EffectType
    payload: dict[str, Any] = field(default_factory=dict)
    result_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ledger shape: ``{"type": <value>, "payload": ..., "result_key": ...}``."""
        return {"type": plain_value(self.type), "payload": self.payload, "result_key": self.result_key}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Effect:
        return cls(
            type=enum_member(EffectType, data["type"], "effect.type"),
            payload=dict(data.get("payload") or {}),
            result_key=data.get("result_key"),
        )


@dataclass(frozen=True)
class StepPlan:
    """What a node returns: complete, request an effect, or go to the next node."""

    node_id: str
    effect: Effect | None = None
    next_node: str | None = None
    complete_output: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "effect": self.effect.to_dict() if self.effect is not None else None,
            "next_node": self.next_node,
            "complete_output": self.complete_output,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepPlan:
        eff = data.get("effect")
        return cls(
            node_id=data["node_id"],
            effect=Effect.from_dict(eff) if eff else None,
            next_node=data.get("next_node"),
            complete_output=data.get("complete_output"),
        )


@dataclass(slots=True)
class WaitState:
    """Why and on what a run waits, and where it goes when it resumes."""

    reason: WaitReason
    wait_key: str | None = None
    until: str | None = None
    resume_to_node: str | None = None
    result_key: str | None = None
    prompt: str | None = None
    choices: list[str] | None = None
    allow_free_text: bool = True
    details: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "reason": plain_value(self.reason),
            "wait_key": self.wait_key,
            "until": self.until,
            "resume_to_node": self.resume_to_node,
            "result_key": self.result_key,
            "prompt": self.prompt,
            "choices": self.choices,
            "allow_free_text": self.allow_free_text,
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WaitState:
        if not data.get("reason"):
            raise CorruptRecordError(location="waiting", reason="a waiting state needs a reason")
        return cls(
            reason=enum_member(WaitReason, data["reason"], "waiting.reason"),
            wait_key=data.get("wait_key"),
            until=data.get("until"),
            resume_to_node=data.get("resume_to_node"),
            result_key=data.get("result_key"),
            prompt=data.get("prompt"),
            choices=data.get("choices"),
            allow_free_text=bool(data.get("allow_free_text", True)),
            details=data.get("details"),
        )


@dataclass(slots=True)
class RunState:
    """The durable state of one run: where it is, its variables, and why it waits."""

    run_id: str
    workflow_id: str
    status: RunStatus
    current_node: str
    vars: dict[str, Any] = field(default_factory=dict)
    waiting: WaitState | None = None
    output: dict[str, Any] | None = None
    error: str | None = None
    created_at: str = field(default_factory=utc_now_iso)
    updated_at: str = field(default_factory=utc_now_iso)
    actor_id: str | None = None
    session_id: str | None = None
    parent_run_id: str | None = None

    @classmethod
    def new(
        cls,
        *,
        workflow_id: str,
        entry_node: str,
        actor_id: str | None = None,
        session_id: str | None = None,
        vars: dict[str, Any] | None = None,
        parent_run_id: str | None = None,
        run_id: str | None = None,
    ) -> RunState:
        """A running run at ``entry_node`` with a fresh uuid4 id (or the given ``run_id``)."""
        return cls(
            run_id=run_id or new_id(),
            workflow_id=workflow_id,
            status=RunStatus.RUNNING,
            current_node=entry_node,
            vars=vars or {},
            actor_id=actor_id,
            session_id=session_id,
            parent_run_id=parent_run_id,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "workflow_id": self.workflow_id,
            "status": plain_value(self.status),
            "current_node": self.current_node,
            "vars": self.vars,
            "waiting": self.waiting.to_dict() if self.waiting is not None else None,
            "output": self.output,
            "error": self.error,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "actor_id": self.actor_id,
            "session_id": self.session_id,
            "parent_run_id": self.parent_run_id,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunState:
        try:
            waiting = data.get("waiting")
            return cls(
                run_id=data["run_id"],
                workflow_id=data["workflow_id"],
                status=enum_member(RunStatus, data["status"], "status"),
                current_node=data["current_node"],
                vars=dict(data.get("vars") or {}),
                waiting=WaitState.from_dict(waiting) if waiting else None,
                output=data.get("output"),
                error=data.get("error"),
                created_at=data.get("created_at") or utc_now_iso(),
                updated_at=data.get("updated_at") or utc_now_iso(),
                actor_id=data.get("actor_id"),
                session_id=data.get("session_id"),
                parent_run_id=data.get("parent_run_id"),
            )
        except KeyError as exc:
            raise CorruptRecordError(location="run state", reason=f"missing field {exc.args[0]!r}") from None


@dataclass(frozen=True)
class EffectOutcome:
    """What executing an effect produced: a result, a wait, or an error."""

    status: str  # "completed" | "waiting" | "failed"
    result: Any = None
    wait: WaitState | None = None
    error: str | None = None
    #: False for a failure that another attempt cannot fix (an HTTP 4xx): no retry.
    retryable: bool = True

    @classmethod
    def completed(cls, result: Any = None) -> EffectOutcome:
        return cls(status="completed", result=result)

    @classmethod
    def waiting(cls, wait: WaitState) -> EffectOutcome:
        return cls(status="waiting", wait=wait)

    @classmethod
    def failed(cls, error: str, *, retryable: bool = True) -> EffectOutcome:
        return cls(status="failed", error=error, retryable=retryable)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "status": self.status,
            "result": self.result,
            "wait": self.wait.to_dict() if self.wait is not None else None,
            "error": self.error,
        }
        if not self.retryable:
            data["retryable"] = False
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EffectOutcome:
        status = data.get("status")
        if status not in ("completed", "waiting", "failed"):
            raise CorruptRecordError(location="effect outcome", reason=f"unknown status {status!r}")
        wait = data.get("wait")
        return cls(
            status=status,
            result=data.get("result"),
            wait=WaitState.from_dict(wait) if wait else None,
            error=data.get("error"),
            retryable=data.get("retryable", True) is not False,
        )


_RUN_ID_RE = re.compile(r"[A-Za-z0-9_\-:][A-Za-z0-9_.\-:]{0,199}")


def validate_run_id(run_id: Any) -> str:
    """Return ``run_id`` if every store can hold it, else raise :class:`InvalidRunId`.

    Letters, digits, ``_ - . :`` only: no path separators (file stores) and no braces
    (they would break the Redis Cluster hash tag ``{run_id}``).
    """
    if not isinstance(run_id, str) or not _RUN_ID_RE.fullmatch(run_id):
        raise InvalidRunId(run_id)
    return run_id
