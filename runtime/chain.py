"""The tamper-evident ledger: each record carries the hash of the one before it.

``record_hash`` is the SHA-256 (64 hex) of the record's canonical UTF-8 JSON with
``prev_hash`` set and ``record_hash`` and ``signature`` left out. The first record of a
run has ``prev_hash`` null, and that null is part of what is hashed. Every backend
(memory, JSON files, Redis) must produce the same hashes for the same records.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from ._hashing import canonical_utf8, sha256_hex
from .models import StepRecord
from .step import scan_effect_result

__all__ = ["compute_record_hash", "HashChainedLedgerStore", "verify_ledger_chain"]


def compute_record_hash(*, record: StepRecord | Mapping[str, Any], prev_hash: str | None) -> str:
    """The chain hash of ``record`` placed after a record whose hash is ``prev_hash``."""
    data = dict(record.to_dict() if isinstance(record, StepRecord) else record)
    data["prev_hash"] = prev_hash
    data.pop("record_hash", None)
    data.pop("signature", None)
    return sha256_hex(canonical_utf8(data))


class HashChainedLedgerStore:
    """Wraps any ledger store and chains the records appended through it.

    The chain head is read from the inner store before every append (``last_record_hash``
    or ``last_record``, O(1) on our stores), so several processes taking turns on one run keep one chain.
    Only an inner store without ``last_record`` has its heads cached here, as the
    reference did. Two writers appending to one run *at the same time* is outside the
    kernel's model; the Redis store checks the head inside its atomic commit instead.
    """

    def __init__(self, inner: Any, *, signer: Any = None) -> None:
        self._inner = inner
        #: Optional: ``signer.sign(actor_id, record_hash) -> str | None`` fills ``signature``
        #: (``stores.signing.LedgerSigner``, Ed25519; the kernel itself signs nothing).
        self._signer = signer
        self._heads: dict[str, str | None] = {}
        self._lock = threading.Lock()
        self._last_fn = getattr(inner, "last_record", None)
        self._head_fn = getattr(inner, "last_record_hash", None)

    @property
    def inner(self) -> Any:
        return self._inner

    def _head(self, run_id: str) -> str | None:
        if self._head_fn is not None:
            return self._head_fn(run_id)  # type: ignore[no-any-return]
        if self._last_fn is not None:
            last = self._last_fn(run_id)
            return last.get("record_hash") if last else None
        if run_id not in self._heads:
            records = self._inner.list(run_id)
            self._heads[run_id] = records[-1].get("record_hash") if records else None
        return self._heads[run_id]

    def append(self, record: StepRecord) -> None:
        with self._lock:
            prev = self._head(record.run_id)
            record.prev_hash = prev
            record.record_hash = compute_record_hash(record=record, prev_hash=prev)
            if self._signer is not None:
                record.signature = self._signer.sign(record.actor_id, record.record_hash)
            self._inner.append(record)
            self._heads[record.run_id] = record.record_hash

    def list(self, run_id: str) -> list[dict[str, Any]]:
        return self._inner.list(run_id)  # type: ignore[no-any-return]

    def last_record(self, run_id: str) -> dict[str, Any] | None:
        if self._last_fn is not None:
            return self._last_fn(run_id)  # type: ignore[no-any-return]
        records = self._inner.list(run_id)
        return records[-1] if records else None

    def find_effect_result(self, run_id: str, idempotency_key: str) -> Any:
        find = getattr(self._inner, "find_effect_result", None)
        if find is not None:
            return find(run_id, idempotency_key)
        return scan_effect_result(self._inner.list(run_id), idempotency_key)  # no index: scan, as 0.2.0 did

    def head(self, run_id: str) -> str | None:
        """The hash of the newest record of the run (what the next record will point at)."""
        with self._lock:
            return self._head(run_id)

    def verify(self, run_id: str) -> dict[str, Any]:
        """:func:`verify_ledger_chain` over the run's records, plus a check of the tail.

        Records alone cannot show that the newest ones were cut off. An inner store that
        keeps a head of its own (``chain_head``, as the Redis store will) is compared for
        equality; otherwise the newest hash this wrapper wrote must still be in the chain
        (another process may have appended after it, which is fine).
        """
        records = self.list(run_id)
        head_fn = getattr(self._inner, "chain_head", None)
        if head_fn is not None:
            return verify_ledger_chain(records, expected_head=head_fn(run_id))
        report = verify_ledger_chain(records)
        known = self._heads.get(run_id)
        if report["ok"] and known is not None and all(r.get("record_hash") != known for r in records):
            report["errors"].append({"index": len(records), "type": "head_mismatch", "expected_head": known,
                                     "actual_head": report["head_hash"]})
            report["ok"], report["first_bad_index"] = False, len(records)
        return report


def verify_ledger_chain(
    records: Iterable[Mapping[str, Any]], *, expected_head: str | None = None
) -> dict[str, Any]:
    """Check a run's records, oldest first, and report every break in the chain.

    Returns ``{ok, count, errors, first_bad_index, head_hash, computed_head_hash}``. Each
    error is ``{index, type, ...}`` with type ``missing_record_hash`` (the walk stops there),
    ``prev_hash_mismatch`` (``expected_prev_hash``/``actual_prev_hash``: a record removed,
    inserted or moved) or ``record_hash_mismatch`` (``stored``/``computed``: a record edited).
    The walk goes on from each record's stored hash, so one edit reports one error.
    ``first_bad_index`` is the index of the first error, 0 included (decision D3), and
    ``computed_head_hash`` is recomputed from the records' contents alone.

    With ``expected_head`` (the head a store kept beside the ledger), removing the newest
    records is detected too: a ``head_mismatch`` error at index ``count``.
    """
    items = list(records)
    errors: list[dict[str, Any]] = []
    stored_prev: str | None = None
    computed_prev: str | None = None
    head_hash: str | None = None
    for i, rec in enumerate(items):
        stored = rec.get("record_hash")
        if not stored:
            errors.append({"index": i, "type": "missing_record_hash"})
            break
        actual_prev = rec.get("prev_hash")
        if actual_prev != stored_prev:
            errors.append(
                {"index": i, "type": "prev_hash_mismatch", "expected_prev_hash": stored_prev,
                 "actual_prev_hash": actual_prev}
            )
        computed = compute_record_hash(record=rec, prev_hash=actual_prev)
        if computed != stored:
            errors.append({"index": i, "type": "record_hash_mismatch", "stored": stored, "computed": computed})
        computed_prev = compute_record_hash(record=rec, prev_hash=computed_prev)
        stored_prev = stored
        head_hash = stored
    if expected_head is not None and not errors and head_hash != expected_head:
        errors.append(
            {"index": len(items), "type": "head_mismatch", "expected_head": expected_head, "actual_head": head_hash}
        )
    return {
        "ok": not errors,
        "count": len(items),
        "errors": errors,
        "first_bad_index": errors[0]["index"] if errors else None,
        "head_hash": head_hash,
        "computed_head_hash": computed_prev,
    }
