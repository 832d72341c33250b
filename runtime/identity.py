"""Who acted: a stable actor id derived from what describes the actor."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._hashing import canonical_utf8, sha256_hex

__all__ = ["ActorFingerprint"]


@dataclass(frozen=True)
class ActorFingerprint:
    """An actor (person, agent, service) and the id runs and ledger records carry for it."""

    actor_id: str
    kind: str
    display_name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_metadata(
        cls, *, kind: str, display_name: str | None = None, metadata: dict[str, Any] | None = None
    ) -> ActorFingerprint:
        """``ar_`` + 24 hex chars of SHA-256 over ``{kind, display_name, metadata}`` (UTF-8 canonical JSON)."""
        meta = dict(metadata or {})
        digest = sha256_hex(canonical_utf8({"kind": kind, "display_name": display_name, "metadata": meta}))
        return cls(actor_id=f"ar_{digest[:24]}", kind=kind, display_name=display_name, metadata=meta)

    def to_dict(self) -> dict[str, Any]:
        return {"actor_id": self.actor_id, "kind": self.kind, "display_name": self.display_name,
                "metadata": dict(self.metadata)}
