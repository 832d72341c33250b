"""How many times an effect is tried, how long to wait between tries, and its idempotency key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ._hashing import canonical_ascii, quote_ascii, sha256_hex
from ._json import ensure_json
from .models import Effect, EffectType, RunState

__all__ = [
    "EffectPolicy",
    "DefaultEffectPolicy",
    "RetryPolicy",
    "NoRetryPolicy",
    "compute_idempotency_key",
    "effect_seq_of",
]


@runtime_checkable
class EffectPolicy(Protocol):
    """Decides retries and idempotency keys for effects."""

    def max_attempts(self, effect: Effect) -> int:
        """How many times the effect may be tried in all (1 = no retry)."""
        ...

    def backoff_seconds(self, *, effect: Effect, attempt: int) -> float:
        """How long to wait after failed ``attempt`` (1-based) before the next one."""
        ...

    def idempotency_key(self, *, run: RunState, node_id: str, effect: Effect) -> str:
        """The key under which the effect's result is recorded and found again."""
        ...


def effect_seq_of(run: RunState) -> int:
    """How many effects the run has landed so far (``vars["_runtime"]["effect_seq"]``, D2)."""
    rt = run.vars.get("_runtime")
    if isinstance(rt, dict):
        seq = rt.get("effect_seq", 0)
        if isinstance(seq, int):
            return seq
    return 0


def compute_idempotency_key(*, run_id: str, node_id: str, effect: Effect, effect_seq: int = 0) -> str:
    """First 32 hex chars of SHA-256 over the canonical JSON of the effect's identity.

    The hashed object is ``{run_id, node_id, effect_type, effect_payload, effect_seq}``
    (ASCII-escaped, sorted keys, compact). ``effect_seq`` is decision D2: an effect issued
    again by a loop gets a new key, while a crash before the commit recomputes the same one.
    """
    etype = effect.type._value_ if isinstance(effect.type, EffectType) else str(effect.type)
    try:
        payload = canonical_ascii(effect.payload)
    except (TypeError, ValueError, RecursionError):
        ensure_json(effect.payload, f"effect payload of node '{node_id}'")
        raise
    # canonical_ascii({"run_id", "node_id", "effect_type", "effect_payload", "effect_seq"}),
    # assembled by hand (keys in sorted order) because this runs for every effect.
    text = (
        f'{{"effect_payload":{payload},"effect_seq":{int(effect_seq)},"effect_type":{quote_ascii(etype)},'
        f'"node_id":{quote_ascii(node_id)},"run_id":{quote_ascii(run_id)}}}'
    )
    return sha256_hex(text)[:32]


@dataclass
class DefaultEffectPolicy:
    """One attempt by default; per-type attempts keyed by the effect type value ("llm_call")."""

    default_max_attempts: int = 1
    default_backoff_base: float = 1.0
    default_backoff_max: float = 60.0
    effect_max_attempts: Mapping[str, int] = field(default_factory=dict)

    def max_attempts(self, effect: Effect) -> int:
        etype = effect.type._value_ if isinstance(effect.type, EffectType) else str(effect.type)
        return max(1, int(self.effect_max_attempts.get(etype, self.default_max_attempts)))

    def backoff_seconds(self, *, effect: Effect, attempt: int) -> float:
        delay = self.default_backoff_base * (2 ** max(attempt - 1, 0))
        return float(min(delay, self.default_backoff_max))

    def idempotency_key(self, *, run: RunState, node_id: str, effect: Effect) -> str:
        return compute_idempotency_key(
            run_id=run.run_id, node_id=node_id, effect=effect, effect_seq=effect_seq_of(run)
        )


class RetryPolicy(DefaultEffectPolicy):
    """Retries LLM calls and tool calls with exponential backoff; other effects run once."""

    def __init__(
        self,
        *,
        llm_max_attempts: int = 3,
        tool_max_attempts: int = 2,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
    ) -> None:
        super().__init__(
            default_max_attempts=1,
            default_backoff_base=backoff_base,
            default_backoff_max=backoff_max,
            effect_max_attempts={
                EffectType.LLM_CALL.value: llm_max_attempts,
                EffectType.TOOL_CALLS.value: tool_max_attempts,
            },
        )


class NoRetryPolicy(DefaultEffectPolicy):
    """Every effect runs once."""

    def __init__(self) -> None:
        super().__init__(default_max_attempts=1, default_backoff_base=0.0, default_backoff_max=0.0)

    def backoff_seconds(self, *, effect: Effect, attempt: int) -> float:
        return 0.0


