"""The ledger view of a :class:`~stores.redis.RedisBackend`: one Redis Stream per run, always
hash-chained, and the chaining of the records a commit appends."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any

from runtime import StepRecord
from runtime.chain import compute_record_hash, verify_ledger_chain
from runtime.models import validate_run_id

from .codec import decode, decode_record, encode, pack_record

if TYPE_CHECKING:
    from .backend import RedisBackend

__all__ = ["RedisLedgerStore", "chain_records"]


def chain_records(records: list[StepRecord], head: str, *, signer: Any, limit: int
                  ) -> tuple[list[bytes], list[bytes | str], str]:
    """Hash-chain ``records`` after ``head`` (``prev_hash``, ``record_hash`` and, with a signer,
    ``signature`` set in place) and encode them; also the (idempotency key, result) pairs they
    make reusable, and the new head."""
    encoded: list[bytes] = []
    results: list[bytes | str] = []
    prev = head or None
    for record in records:
        record.prev_hash = prev
        data = record.to_dict()
        record.record_hash = data["record_hash"] = compute_record_hash(record=data, prev_hash=prev)
        if signer is not None:  # the signature is not part of the hash
            record.signature = data["signature"] = signer.sign(data["actor_id"], record.record_hash)
        prev = record.record_hash
        encoded.append(encode(pack_record(data), what="ledger record", limit=limit))
        if data["status"] == "completed" and data["idempotency_key"] and data["result"] is not None:
            results += [data["idempotency_key"], encode(data["result"], what="effect result", limit=limit)]
    return encoded, results, prev or ""


class RedisLedgerStore:
    """The ledger view of a :class:`RedisBackend`: one stream per run, always hash-chained."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend

    def append(self, record: StepRecord) -> None:
        """Chain and append one record (the run's state is not touched)."""
        self.backend.append([record], run_id=record.run_id)

    def begin_effect(self, record: StepRecord) -> Any:
        """Append the ``started`` record of an effect attempt, unless a result is already
        recorded under its idempotency key: then return that result and append nothing."""
        return self.backend.append([record], run_id=record.run_id, lookup_key=record.idempotency_key)

    def _entries(self, run_id: str, entries: Any) -> builtins.list[tuple[str, dict[str, Any]]]:
        key = self.backend.keys.ledger(run_id)
        limit = self.backend.max_value_bytes
        return [(entry_id.decode(), decode_record(fields, key=key, entry_id=entry_id, run_id=run_id, limit=limit))
                for entry_id, fields in entries]

    def list(self, run_id: str) -> builtins.list[dict[str, Any]]:
        rid = validate_run_id(run_id)
        return [record for _id, record in self._entries(rid, self.backend.client.xrange(self.backend.keys.ledger(rid)))]

    def page(self, run_id: str, *, after: str = "-", count: int = 100) -> builtins.list[tuple[str, dict[str, Any]]]:
        """Up to ``count`` records after stream id ``after`` ("-": from the first), oldest first,
        as ``(entry id, record)`` pairs: one ``XRANGE``, however long the ledger."""
        rid = validate_run_id(run_id)
        start = "-" if after == "-" else f"({after}"
        return self._entries(rid, self.backend.client.xrange(self.backend.keys.ledger(rid), start, "+", count=count))

    def length(self, run_id: str) -> int:
        return int(self.backend.client.xlen(self.backend.keys.ledger(validate_run_id(run_id))))

    def follow(self, run_id: str, *, last_id: str = "0", block_ms: int = 5000, count: int = 100
               ) -> builtins.list[tuple[str, dict[str, Any]]]:
        """Records appended after stream id ``last_id`` ("0": from the start), waiting up to
        ``block_ms`` for one with a blocking ``XREAD`` (not polling); ``(entry id, record)`` pairs."""
        rid = validate_run_id(run_id)
        reply = self.backend.client.xread({self.backend.keys.ledger(rid): last_id}, count=count, block=block_ms)
        return [pair for _stream, entries in reply or () for pair in self._entries(rid, entries)]

    def last_record(self, run_id: str) -> dict[str, Any] | None:
        rid = validate_run_id(run_id)
        entries = self._entries(rid, self.backend.client.xrevrange(self.backend.keys.ledger(rid), count=1))
        return entries[0][1] if entries else None

    def last_record_hash(self, run_id: str) -> str | None:
        return self.chain_head(run_id)

    def chain_head(self, run_id: str) -> str | None:
        """The chain head stored beside the stream (what the next record must link to)."""
        head = self.backend.client.hget(self.backend.keys.run(validate_run_id(run_id)), "h")
        return head.decode() if head else None

    def find_effect_result(self, run_id: str, idempotency_key: str) -> Any:
        key = self.backend.keys.results(run_id)
        raw = self.backend.client.hget(key, idempotency_key)
        if raw is None:
            return None
        return decode(raw, key=f"{key} field {idempotency_key}", run_id=run_id, limit=self.backend.max_value_bytes)

    def verify(self, run_id: str) -> dict[str, Any]:
        """The chain check of the run's records against the stored head."""
        return verify_ledger_chain(self.list(run_id), expected_head=self.chain_head(run_id))
