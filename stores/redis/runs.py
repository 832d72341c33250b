"""The run-store view of a :class:`~stores.redis.RedisBackend` (``RunStore`` and
``QueryableRunStore``): listings walk the indexes, never SCAN."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from runtime import RunState, RunStatus, StepRecord, WaitReason
from runtime._clock import epoch_ms

from .codec import decode_state

if TYPE_CHECKING:
    from .backend import RedisBackend
    from .ledger import RedisLedgerStore

__all__ = ["RedisRunStore"]

#: Index entries fetched per round trip when a filtered listing pages through an index.
_PAGE = 200


class RedisRunStore:
    """The run-store view of a :class:`RedisBackend` (``RunStore`` and ``QueryableRunStore``)."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend

    @property
    def ledger(self) -> RedisLedgerStore:
        """The ledger committed together with this store's states."""
        return self.backend.ledger

    def save(self, run: RunState) -> None:
        self.backend.commit(run, [])

    def create(self, run: RunState) -> None:
        self.backend.commit(run, [], create=True)

    def commit(self, run: RunState, records: list[StepRecord]) -> None:
        """Save ``run`` and append ``records`` atomically, checking the version last seen."""
        self.backend.commit(run, records)

    def load(self, run_id: str) -> RunState | None:
        found = self.backend.load_versioned(run_id)
        return found[0] if found else None

    def load_many(self, run_ids: list[str]) -> list[RunState]:
        """The states of ``run_ids`` that exist, in that order (one pipelined round trip)."""
        if not run_ids:
            return []
        keys, limit = self.backend.keys, self.backend.max_value_bytes
        pipe = self.backend.client.pipeline(transaction=False)
        for rid in run_ids:
            pipe.hget(keys.run(rid), "s")
        return [decode_state(raw, key=keys.run(rid), run_id=rid, limit=limit)
                for rid, raw in zip(run_ids, pipe.execute()) if raw is not None]

    def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        wait_reason: WaitReason | None = None,
        workflow_id: str | None = None,
        limit: int = 100,
        attrs: Mapping[str, str] | None = None,
    ) -> list[RunState]:
        """Runs with every filter given, newest ``updated_at`` first (a page of 200 ids per round
        trip from the most selective index: wait reason, then status, then workflow).

        ``attrs`` (name -> the value's stored text, ``workers.attrs.query_attrs``): the runs
        started with those attributes, newest *created* first, read from an attribute index
        (:meth:`~stores.redis.attrs.RedisRunAttrs.runs_by_attrs`) and filtered by the others.
        """
        k = self.backend.keys
        st = RunStatus(status)._value_ if status is not None else None
        wr = WaitReason(wait_reason)._value_ if wait_reason is not None else None

        def keep(run: RunState) -> bool:
            return ((st is None or RunStatus(run.status)._value_ == st)
                    and (workflow_id is None or run.workflow_id == workflow_id)
                    and (wr is None or (run.waiting is not None and WaitReason(run.waiting.reason)._value_ == wr)))

        if attrs:
            return self.backend.runs_by_attrs(attrs, keep=keep, limit=limit)
        if wr is not None:
            index = k.by_wait_reason(wr)
        elif st is not None:
            index = k.by_status(st)
        elif workflow_id is not None:
            index = k.by_workflow(workflow_id)
        else:
            index = k.by_updated()
        out: list[RunState] = []
        start = 0
        client = self.backend.client
        while len(out) < limit:
            ids = [i.decode() for i in client.zrevrange(index, start, start + _PAGE - 1)]
            if not ids:
                break
            start += len(ids)
            out.extend(run for run in self.load_many(ids) if keep(run))
        return out[: max(limit, 0)]

    def list_due_wait_until(self, *, now_iso: str, limit: int = 100) -> list[RunState]:
        now_ms = epoch_ms(now_iso, field="now_iso")
        ids = self.backend.client.zrangebyscore(self.backend.keys.timers(), "-inf", now_ms, start=0, num=limit)
        return self.load_many([i.decode() for i in ids])

    def list_children(self, *, parent_run_id: str, status: RunStatus | None = None) -> list[RunState]:
        runs = self.load_many(self.backend.children_of(parent_run_id))
        st = RunStatus(status)._value_ if status is not None else None
        return [r for r in runs if st is None or RunStatus(r.status)._value_ == st]

    def runs_waiting_on(self, wait_key: str) -> list[str]:
        """Ids of the runs waiting on ``wait_key`` (from the wait-key index, no scan)."""
        return self.backend.runs_waiting_on(wait_key)
