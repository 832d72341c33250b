"""The store interfaces every backend implements (in memory, JSON files, Redis).

Backends satisfy these Protocols structurally; none needs to inherit. The kernel only
ever talks to stores through them, so it never imports a backend.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from .models import RunState, RunStatus, StepRecord, WaitReason

__all__ = [
    "RunStore",
    "CreatableRunStore",
    "AtomicCommitRunStore",
    "QueryableRunStore",
    "LedgerStore",
    "EffectResultIndex",
]


@runtime_checkable
class RunStore(Protocol):
    """Where run states live between steps."""

    def save(self, run: RunState) -> None:
        """Store ``run`` whole, replacing any earlier state of the same run id.

        Atomic: a reader sees the old state or the new one, never a mix. Raises
        ``PayloadNotSerializable`` (naming the key) before writing anything if the
        state is not JSON.
        """
        ...

    def load(self, run_id: str) -> RunState | None:
        """The stored state, as a fresh object the caller may change; None for an unknown id.

        Raises ``CorruptRecordError`` naming the file/key when the stored bytes are unreadable.
        """
        ...


@runtime_checkable
class CreatableRunStore(Protocol):
    """A run store that can create a run only if its id is free (decision D7)."""

    def create(self, run: RunState) -> None:
        """Store a new run; ``RunAlreadyExists`` if the id is taken, leaving the stored run intact."""
        ...


@runtime_checkable
class AtomicCommitRunStore(Protocol):
    """A run store that owns a ledger and writes a state and its records as one step.

    The ``Runtime`` uses ``commit`` when ``run_store.ledger`` is the ledger store it was
    given, so that a step is either wholly stored or not at all.
    """

    ledger: Any

    def commit(self, run: RunState, records: list[StepRecord]) -> None:
        """Save ``run`` and append ``records`` atomically; ``VersionConflict`` (nothing
        written) if another writer moved the run since this store last read or wrote it."""
        ...


@runtime_checkable
class QueryableRunStore(Protocol):
    """A run store that can answer the scheduler's questions without a caller-side scan."""

    def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        wait_reason: WaitReason | None = None,
        workflow_id: str | None = None,
        limit: int = 100,
    ) -> list[RunState]:
        """Runs matching every given filter, newest ``updated_at`` first.

        A ``wait_reason`` filter drops runs that are not waiting.
        """
        ...

    def list_due_wait_until(self, *, now_iso: str, limit: int = 100) -> list[RunState]:
        """Waiting runs whose ``until`` is at or before ``now_iso`` (times parsed, D4), oldest first."""
        ...

    def list_children(self, *, parent_run_id: str, status: RunStatus | None = None) -> list[RunState]:
        """Runs whose ``parent_run_id`` is the given id, optionally of one status; no set order."""
        ...


@runtime_checkable
class LedgerStore(Protocol):
    """The append-only journal of every run."""

    def append(self, record: StepRecord) -> None:
        """Add one record at the end of its run's ledger (durable when this returns).

        The record is serialised at call time: changing the object later (as the
        ``started`` -> outcome pattern does) does not change what was stored.
        """
        ...

    def list(self, run_id: str) -> list[dict[str, Any]]:
        """Every record of the run as dicts, oldest first; [] when none."""
        ...


@runtime_checkable
class EffectResultIndex(Protocol):
    """A ledger that indexes completed effect results by idempotency key.

    The kernel asks this before executing an effect, so that a crash between executing
    an effect and committing the run reuses the result instead of repeating the effect.
    A ledger without this method is still accepted: the runtime then scans ``list()``,
    as the reference did (correct, but each effect step costs O(ledger length)).

    A ledger may also offer ``begin_effect(started_record)``: return the result recorded
    under the record's idempotency key if there is one (appending nothing), else append the
    record and return None. The runtime then uses it instead of a lookup followed by an
    append, which saves a round trip per effect step on a remote store.
    """

    def find_effect_result(self, run_id: str, idempotency_key: str) -> Any:
        """The result of the first ``completed`` record with this key, or None if there is none.

        A recorded result of None counts as no result (the effect runs again).
        """
        ...
