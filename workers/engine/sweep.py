"""Recovery: the sweep beat runs (expired leases, due timers) and the dead-letter list of
refused messages.

Every commit that expects a message puts the run in the lease index; the sweep claims the
expired leases and sends again what each run's dispatch names, so a lost message, a dead
worker or a crash between commit and send costs one lease period (``docs/celery.md``).
It counts the expired leases of a dispatch in the run hash (field ``n``, which every commit
removes): at ``WorkerSettings.poison_after`` the run is failed as poisoned instead, since a
node or effect that kills its worker process would otherwise be sent again forever.
"""

from __future__ import annotations

from typing import Any

from runtime import RunState, RunStatus, StepRecord, VersionConflict
from stores.redis.dispatch import Dispatch

from ..stuck import detect_stuck
from .base import EngineBase, iso, logger

__all__ = ["Recovery", "DEAD_LETTERS_MAX"]

#: Refused messages kept in the dead-letter list.
DEAD_LETTERS_MAX = 10_000


class Recovery(EngineBase):
    """``Engine.sweep``, ``Engine.dead_letter`` and ``Engine.dead_letters``."""

    def sweep(self) -> dict[str, int]:
        """Wake due timers and re-send what expired leases name; safe on many workers at once."""
        k = self.backend.keys
        counts = {"leases": 0, "timers": 0, "poisoned": 0}
        try:  # flow-control shares of attempts whose worker died or whose message was lost (their lease
            # expired), first: an attempt sent again below then finds its old share counted as reclaimed
            counts["slots_reclaimed"] = self.flow.admission.reclaim_expired(self.settings.sweep_batch)
        except Exception as exc:
            logger.error("sweep: cannot reclaim flow-control shares: %s", exc)
        now, ids = self.backend.claim_due(k.leases(), limit=self.settings.sweep_batch, hold_ms=self._tick_lease)
        self.backend.mark_sweep(now)
        for rid in ids:
            try:
                loaded = self.backend.load_for_driver(rid)
            except Exception as exc:  # one bad run must not stop the sweep of the others
                logger.error("sweep: cannot load run %s: %s", rid, exc)
                continue
            d = loaded.dispatch if loaded is not None else None
            if loaded is None or d is None:  # nothing expected: the lease outlived its dispatch
                self.backend.clear_dispatch(rid)
                continue
            run, v = loaded.run, loaded.version
            if self._parked(rid, loaded, d, counts):
                continue
            counts["leases"] += 1
            if self._poisoned(run, v, d, counts):
                continue
            # A new grant: a worker still holding the old token (paused past its lease, say)
            # is refused at its commit, and its message, if still queued, is dropped.
            effect = d.kind == "effect" and d.pending is not None
            token = self.backend.grant_lease(rid, v, self._effect_lease if effect else self._tick_lease, now)
            if token is None:
                continue  # it moved since it was loaded: its commit sent what is next
            if effect:
                assert d.pending is not None
                self.dispatcher.effect(d.queue or "ticks", rid, v, d.pending.idempotency_key, d.pending.attempt,
                                       workflow=run.workflow_id, node=run.current_node, token=token)
            else:
                self.dispatcher.tick(rid, v, workflow=run.workflow_id, node=run.current_node, token=token)
            logger.info("sweep: lease of run %s expired; %s sent again with fencing token %d", rid, d.kind, token)
        _now, ids = self.backend.claim_due(k.timers(), limit=self.settings.sweep_batch,
                                           hold_ms=int(self.settings.timer_hold_s * 1000))
        for rid in ids:
            counts["timers"] += 1
            self.dispatcher.wake(rid, None)
        try:  # cron schedules (workers/engine/schedules.py): every beat's sweep fires the due ones, once each
            counts.update(self.fire_schedules())
        except Exception as exc:
            logger.error("sweep: cannot fire schedules: %s", exc)
        if counts.get("slots_reclaimed") or counts.get("parked"):
            counts["flow_sent"] = self.flow_dispatch()  # a backstop: passes run at each park and release too
        counts.update(detect_stuck(self))  # stuck runs and SLA rules (workers/stuck.py)
        return counts

    def flow_dispatch(self) -> int:
        """A fair-dispatch pass (``workers/flow/dispatch.py``): the deferred items it sent."""
        if not self.flow.active() and not self.fair.queue.queued():
            return 0
        return self.fair.dispatch()

    def _parked(self, rid: str, loaded: Any, d: Dispatch, counts: dict[str, int]) -> bool:
        """A run whose message waits in a fair-dispatch queue keeps its lease: renewed here, not
        sent again (nor counted towards poison). True when so."""
        if d.kind not in ("tick", "effect") or not self.flow.active():
            return False
        if not self.fair.is_parked(rid, d.pending if d.kind == "effect" else None):
            return False
        lease = self._effect_lease if d.kind == "effect" else self._tick_lease
        if self.backend.renew_held_lease(rid, loaded.token, lease):
            counts["parked"] = counts.get("parked", 0) + 1
        return True

    def _poisoned(self, run: RunState, v: int, d: Dispatch, counts: dict[str, int]) -> bool:
        """Count one more lost delivery of the run's dispatch; at ``poison_after`` fail the run
        (its node or effect kills the worker process) instead of sending it again. True when
        nothing is to be sent."""
        limit = self.settings.poison_after
        if limit <= 0 or d.kind not in ("tick", "effect") or run.status != RunStatus.RUNNING:
            return False
        lost = self.backend.count_lost(run.run_id)
        if lost < limit:
            return False
        node = run.current_node or ""
        what = ""
        if d.kind == "effect" and d.pending is not None:
            what = f" (its {getattr(d.pending.effect.type, 'value', d.pending.effect.type)} effect)"
        message = (f"Node '{node}'{what} lost its worker {lost} times (the process died while running it); "
                   "the run is failed as poisoned")
        # An effect whose attempt started: its `started` record is the one that fails.
        started = d.started_record() if d.kind == "effect" else None
        records: list[StepRecord] = [started] if started is not None else []
        self._fail(run, records, message)
        try:
            self._commit_end(run, records, v, fenced=False)
        except VersionConflict:  # a worker committed meanwhile: the run moved, its commit sends what is next
            return True
        counts["poisoned"] += 1
        logger.error("sweep: run %s failed as poisoned: %s", run.run_id, message)
        try:
            self.backend.set_last_failure(run.run_id, {
                "where": "poisoned", "node": node, "attempt": lost, "type": "WorkerLost", "message": message,
                "at": iso(self.backend.time_ms()), "traceback": ""})
        except Exception as exc:  # a courtesy, as in EngineBase._keep_failure
            logger.warning("run %s: could not keep the failure: %s", run.run_id, exc)
        self._after_end(run)
        return True

    def dead_letter(self, task: str, args: Any, reason: str) -> None:
        """Keep a refused message and why (newest first, at most ``DEAD_LETTERS_MAX``)."""
        self.backend.add_dead_letter({"task": task, "args": repr(args)[:500], "reason": " ".join(reason.split())[:500],
                                      "at": iso(self.backend.time_ms())}, keep=DEAD_LETTERS_MAX)
        logger.warning("refused %s%s: %s", task, repr(args)[:200], reason)

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        return self.backend.dead_letters(limit)
