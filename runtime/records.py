"""Ledger records: one :class:`StepRecord` per step, two per effect attempt (``started``, then its outcome).

A record is stamped when it is made (``started_at``) and when it ends (``ended_at``); its
``effect`` is stored with credentials hidden (:func:`runtime._redact.redact_secrets`). The
hash chain (:mod:`runtime.chain`) fills ``prev_hash`` and ``record_hash``, a signer
``signature``. Also importable from :mod:`runtime.models`, beside the rest of the data model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from ._clock import utc_now_iso
from ._enums import enum_member, plain_value
from ._ids import new_id
from ._redact import redact_secrets
from .errors import CorruptRecordError

if TYPE_CHECKING:
    from .models import Effect, RunState, WaitState

__all__ = ["StepStatus", "StepRecord"]


class StepStatus(str, Enum):
    STARTED = "started"
    COMPLETED = "completed"
    WAITING = "waiting"
    FAILED = "failed"


@dataclass(slots=True)
class StepRecord:
    """One ledger entry. An effect attempt is written twice: ``started``, then its outcome."""

    run_id: str
    step_id: str
    node_id: str
    status: StepStatus
    effect: dict[str, Any] | None = None
    result: Any = None
    error: str | None = None
    started_at: str = field(default_factory=utc_now_iso)
    ended_at: str | None = None
    actor_id: str | None = None
    session_id: str | None = None
    attempt: int = 1
    idempotency_key: str | None = None
    prev_hash: str | None = None
    record_hash: str | None = None
    signature: str | None = None

    @classmethod
    def start(
        cls,
        *,
        run: RunState,
        node_id: str,
        effect: Effect | None,
        attempt: int = 1,
        idempotency_key: str | None = None,
        started_at: str | None = None,
    ) -> StepRecord:
        """The ``started`` record of a step of ``run``; ``started_at`` defaults to the wall clock."""
        return cls(
            run_id=run.run_id,
            step_id=new_id(),
            node_id=node_id,
            status=StepStatus.STARTED,
            # Credentials in an effect's payload (an API key in LLM params) stay out of the ledger.
            effect=redact_secrets(effect.to_dict()) if effect is not None else None,
            actor_id=run.actor_id,
            session_id=run.session_id,
            started_at=started_at or utc_now_iso(),
            attempt=attempt,
            idempotency_key=idempotency_key,
        )

    def finish_success(self, result: Any = None, *, ended_at: str | None = None) -> StepRecord:
        self.status = StepStatus.COMPLETED
        self.result = result
        self.ended_at = ended_at or utc_now_iso()
        return self

    def finish_waiting(self, wait: WaitState, *, ended_at: str | None = None) -> StepRecord:
        self.status = StepStatus.WAITING
        self.result = {"wait": wait.to_dict()}
        self.ended_at = ended_at or utc_now_iso()
        return self

    def finish_failure(self, error: str, *, ended_at: str | None = None) -> StepRecord:
        self.status = StepStatus.FAILED
        self.error = error
        self.ended_at = ended_at or utc_now_iso()
        return self

    def to_dict(self) -> dict[str, Any]:
        """The stored and hashed shape of the record (plain strings, no enum members)."""
        return {
            "run_id": self.run_id,
            "step_id": self.step_id,
            "node_id": self.node_id,
            "status": plain_value(self.status),
            "effect": self.effect,
            "result": self.result,
            "error": self.error,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "actor_id": self.actor_id,
            "session_id": self.session_id,
            "attempt": self.attempt,
            "idempotency_key": self.idempotency_key,
            "prev_hash": self.prev_hash,
            "record_hash": self.record_hash,
            "signature": self.signature,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepRecord:
        try:
            return cls(
                run_id=data["run_id"],
                step_id=data["step_id"],
                node_id=data["node_id"],
                status=enum_member(StepStatus, data["status"], "ledger record status"),
                effect=data.get("effect"),
                result=data.get("result"),
                error=data.get("error"),
                started_at=data.get("started_at") or "",
                ended_at=data.get("ended_at"),
                actor_id=data.get("actor_id"),
                session_id=data.get("session_id"),
                attempt=int(data.get("attempt") or 1),
                idempotency_key=data.get("idempotency_key"),
                prev_hash=data.get("prev_hash"),
                record_hash=data.get("record_hash"),
                signature=data.get("signature"),
            )
        except KeyError as exc:
            raise CorruptRecordError(location="ledger record", reason=f"missing field {exc.args[0]!r}") from None
