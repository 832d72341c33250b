"""The stuck-run detector and the SLA checks, run at the end of every recovery sweep.

A run is *stuck* when it made no progress for longer than the threshold of its cause; the
cause is what :func:`workers.explain.diagnose` says (``NO_CONSUMER``, ``WAITING_USER``...) and
each cause has its threshold in :class:`~workers.settings.WorkerSettings` (``stuck_*_s``).

The cost of a sweep does not grow with the runs that are fine. No scan, no pass over the runs:

1. **Windows.** For each index scored by the time of the last commit (the running runs; the
   waiting runs of each wait reason), the sweep reads the members whose score crossed the
   index's smallest threshold since the last sweep (``ZRANGEBYSCORE`` from a cursor, ``LIMIT``
   :attr:`~workers.settings.WorkerSettings.sweep_batch`) and schedules a look at each now.
2. **Looks.** ``stuck:looks`` holds when to look at a run next; the sweep claims the due ones
   (as it claims leases) and looks: :func:`~workers.fleet.gather` and ``diagnose`` (a bounded
   number of commands per run). A run past the threshold of its cause is stuck (``stuck:<cause>``
   and a ``run.stuck`` event) and looked at again every ``stuck_recheck_s``; once it moved or
   ended it is no longer (a ``run.unstuck`` event). A run not yet past it is looked at again when
   it will be, a run no threshold or rule can catch is dropped.
3. **SLA rules** (``workers/sla.py``) of the run's workflow are checked at each look: a rule
   broken is decided once per run and rule (``sla:alerts``) and its action scheduled
   (``sla:outbox``); each sweep then does the due actions: cancel and fail inline (the operator
   paths), webhooks on threads (``workers/alerts.py``). A ``max_total_s`` rule needs to see
   runs that keep committing, so while one is registered the sweep also reads the new runs off
   the events stream (their first commit, version 1) and looks at them when that limit is due.

A run is thus found stuck within one sweep period of its threshold, plus the lease period when
the cause is a lost message (the sweep re-sends it first). ``docs/operations.md`` tells more.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from runtime.errors import RunNotFound

from .explain import Code, Diagnosis, Facts, _ms, diagnose
from .fleet import gather
from .sla import SlaRule, breach_of, perform

__all__ = ["detect_stuck", "classify", "threshold_ms", "stuck_runs", "stuck_counts", "CAUSES", "CAUSE_SETTINGS",
           "SOURCES", "LOOK_HOLD_MS"]

logger = logging.getLogger(__name__)

#: The setting that holds the threshold of each cause; a running run's other causes use ``stuck_running_s``.
CAUSE_SETTINGS = {
    Code.NO_CONSUMER: "stuck_no_consumer_s",
    Code.LEASE_EXPIRED: "stuck_lease_expired_s",
    Code.ORPHANED: "stuck_orphaned_s",
    Code.TIMER_OVERDUE: "stuck_timer_overdue_s",
    Code.WAITING_TIMER: "stuck_timer_overdue_s",  # counted from the wake time, listed as TIMER_OVERDUE
    Code.WAITING_USER: "stuck_waiting_user_s",
    Code.WAITING_EVENT: "stuck_waiting_event_s",
    Code.WAITING_CHILD: "stuck_waiting_child_s",
    Code.WAITING_JOB: "stuck_waiting_job_s",
}
_ENDED = (Code.COMPLETED, Code.CANCELLED, Code.FAILED, Code.POISONED)
#: Causes a run can be listed under (every code but those of a run that ended).
CAUSES = tuple(c.value for c in Code if c not in _ENDED and c is not Code.WAITING_TIMER)
#: The indexes the windows read: ``running`` (status) and each wait reason, with the settings
#: of the causes a run found there can have.
SOURCES = {
    "running": ("stuck_no_consumer_s", "stuck_lease_expired_s", "stuck_orphaned_s", "stuck_running_s"),
    "user": ("stuck_waiting_user_s",), "event": ("stuck_waiting_event_s",), "job": ("stuck_waiting_job_s",),
    "subworkflow": ("stuck_waiting_child_s",), "until": ("stuck_timer_overdue_s",),
}
#: Milliseconds a claimed look is held: a sweep that dies while looking is relieved after it.
LOOK_HOLD_MS = 30_000
#: The cursor of the events stream (new runs, for ``max_total_s`` rules) among the window cursors.
_EVENTS_CURSOR = "events"


def threshold_ms(settings: Any, code: Code) -> int:
    """Milliseconds without progress after which a run with this cause is stuck (0: never)."""
    if code in _ENDED:
        return 0
    return int(getattr(settings, CAUSE_SETTINGS.get(code, "stuck_running_s")) * 1000)


def classify(f: Facts, settings: Any, now_ms: int) -> tuple[Diagnosis, str, int, int]:
    """The diagnosis of a run, the cause it would be listed under, since when (epoch ms) the
    cause's clock runs, and the cause's threshold in ms (0: never).

    A sleeping run is judged by its wake time (not by the timer entry, which the sweep pushes
    ahead each time it sends the wake again): past it by the threshold, it is ``TIMER_OVERDUE``.
    """
    waiting_until = f.status == "waiting" and (f.waiting or {}).get("reason") == "until"
    if waiting_until:
        f = replace(f, timer_ms=None)
    d = diagnose(f)
    since = _ms(d.since) or _ms(f.updated_at) or now_ms
    if waiting_until:
        since = _ms((f.waiting or {}).get("until")) or since
    cause = Code.TIMER_OVERDUE if d.code is Code.WAITING_TIMER else d.code
    return d, cause.value, since, threshold_ms(settings, d.code)


def _iso(ms: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat()


class _Detector:
    """One sweep's detection (``detect_stuck``)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.b = engine.backend
        self.s = engine.settings
        self.registry = engine.registry
        self.now = self.b.time_ms()
        self.counts = {"stuck_looked": 0, "stuck_found": 0, "stuck_cleared": 0, "sla_alerts": 0, "sla_actions": 0}
        self.rules = self.registry.all_sla_rules

    # -- 1. windows --------------------------------------------------------------------------------

    def source_threshold_ms(self, source: str) -> int | None:
        limits = [getattr(self.s, name) for name in SOURCES[source]]
        limits += [x for rule in self.rules if (x := rule.smallest_limit_s(source)) is not None]
        limits = [x for x in limits if x > 0]
        return int(min(limits) * 1000) if limits else None

    def windows(self) -> None:
        k, batch = self.b.keys, self.s.sweep_batch
        cursors = self.b.stuck_cursors()
        moved: dict[str, float | str] = {}
        looks: dict[str, int] = {}
        for source in SOURCES:
            t = self.source_threshold_ms(source)
            if t is None:
                continue
            key = k.by_status("running") if source == "running" else k.by_wait_reason(source)
            high = (self.now - t) * 1000.0  # the indexes are scored in µs
            low = cursors.get(source)
            if low is not None and low >= high:
                continue
            members = self.b.index_window(key, low, high, batch)
            for rid, _score in members:
                looks[rid] = self.now
            # A full batch: read on from its last score next time (again from that score, since
            # more runs may share it; a second look is harmless).
            moved[source] = (members[-1][1] - 0.5) if len(members) >= batch else high
        if any(rule.max_total_s is not None for rule in self.rules):
            looks.update(self.new_runs(cursors, moved))
        self.b.schedule_looks(looks)
        self.b.set_stuck_cursors(moved)

    def new_runs(self, cursors: dict[str, float], moved: dict[str, float | str]) -> dict[str, int]:
        """Runs created since the last sweep (their first commit on the events stream), to be
        looked at when the smallest ``max_total_s`` is due."""
        total = min(rule.max_total_s for rule in self.rules if rule.max_total_s is not None)
        raw = self.b.client.hget(self.b.keys.stuck_cursors(), _EVENTS_CURSOR)
        last = raw.decode() if raw else self.b.last_event_id()
        entries = self.b.client.xrange(self.b.keys.events(), min=f"({last}", max="+",
                                       count=10 * self.s.sweep_batch)
        if entries:
            moved[_EVENTS_CURSOR] = entries[-1][0].decode()
        elif not raw:
            moved[_EVENTS_CURSOR] = last
        due = self.now + int(total * 1000)
        return {f[b"run_id"].decode(): due for _id, f in entries if f.get(b"v") == b"1" and b"run_id" in f}

    # -- 2. looks ----------------------------------------------------------------------------------

    def looks(self) -> None:
        _now, ids = self.b.claim_due(self.b.keys.stuck_looks(), limit=self.s.sweep_batch, hold_ms=LOOK_HOLD_MS)
        if not ids:
            return
        entries = self.b.stuck_entries(ids)
        later: dict[str, int] = {}
        done: list[str] = []
        for rid in ids:
            try:
                at = self.look(rid, entries.get(rid))
            except Exception as exc:  # one bad run must not stop the others; looked at again later
                logger.error("stuck detector: cannot look at run %s: %s: %s", rid, type(exc).__name__, exc)
                at = self.now + int(self.s.stuck_recheck_s * 1000)
            if at is None:
                done.append(rid)
            else:
                later[rid] = at
        self.b.schedule_looks(later)
        self.b.drop_looks(done)

    def look(self, rid: str, entry: dict[str, Any] | None) -> int | None:
        """Look at one run; returns when to look again (epoch ms), or None for never."""
        self.counts["stuck_looked"] += 1
        try:
            f = gather(self.b, self.s, rid)
        except RunNotFound:
            if entry is not None:
                self.unstuck(rid, entry, "gone")
            return None
        rules = self.registry.sla_rules(f.workflow_id)
        if f.status in ("completed", "failed", "cancelled"):
            if entry is not None:
                self.unstuck(rid, entry, f.status)
            self.forget_alerts(rid, rules)
            return None
        d, cause, since, threshold = classify(f, self.s, self.now)
        next_at: list[int] = []
        if threshold and self.now - since >= threshold:
            if entry is None or entry.get("cause") != cause or entry.get("updated_at") != f.updated_at:
                self.stuck(rid, f, d, cause, since, entry)
            next_at.append(self.now + int(self.s.stuck_recheck_s * 1000))
        else:
            if entry is not None:
                self.unstuck(rid, entry, "moved")
            if threshold:
                next_at.append(since + threshold)
        if rules:
            next_at += self.check_rules(f, d, rules)
        return min(next_at) if next_at else None

    def stuck(self, rid: str, f: Facts, d: Diagnosis, cause: str, since: int, entry: dict[str, Any] | None) -> None:
        new = {"cause": cause, "since": _iso(since), "since_ms": since, "workflow_id": f.workflow_id,
               "status": f.status, "node": f.node, "updated_at": f.updated_at, "sentence": d.sentence,
               "action": d.action, "found_at": _iso(self.now)}
        fresh = entry is None or entry.get("cause") != cause
        self.b.mark_stuck(rid, new, old_cause=entry.get("cause") if entry else None, event=fresh)
        if fresh:
            self.counts["stuck_found"] += 1
            logger.warning("run %s is stuck (%s): %s", rid, cause, d.sentence)

    def unstuck(self, rid: str, entry: dict[str, Any], why: str) -> None:
        self.b.unmark_stuck(rid, entry, why=why)
        self.counts["stuck_cleared"] += 1
        logger.info("run %s is no longer stuck (%s; was %s)", rid, why, entry.get("cause"))

    # -- 3. SLA rules ------------------------------------------------------------------------------

    def check_rules(self, f: Facts, d: Diagnosis, rules: tuple[SlaRule, ...]) -> list[int]:
        """Decide the rules the run breaks now; returns when the others will be broken."""
        updated = _ms(f.updated_at) or self.now
        created = None
        if any(rule.max_total_s is not None for rule in rules):
            loaded = self.b.load_for_driver(f.run_id)
            created = _ms(loaded.run.created_at) if loaded is not None else None
        later: list[int] = []
        for rule in rules:
            breach = breach_of(rule, f, updated_ms=updated, created_ms=created)
            if breach is None:
                continue
            if breach.at_ms > self.now:
                later.append(breach.at_ms)
                continue
            alert_id = f"{f.run_id} {rule.name}"
            alert = {"alert_id": alert_id, "rule": rule.name, "action": rule.action, "url": rule.url,
                     "run_id": f.run_id, "workflow_id": f.workflow_id, "status": f.status,
                     "reason": (f.waiting or {}).get("reason"), "node": f.node, "limit": breach.limit,
                     "limit_s": breach.limit_s, "since": _iso(breach.since_ms), "breached_at": _iso(breach.at_ms),
                     "at": _iso(self.now), "cause": d.code.value, "sentence": d.sentence, "state": "pending"}
            event = {"event": "sla.breached", "run_id": f.run_id, "rule": rule.name, "action": rule.action,
                     "limit": breach.limit, "workflow_id": f.workflow_id}
            if self.b.sla_fire_once(alert_id, alert, due_ms=self.now, event=event):
                self.counts["sla_alerts"] += 1
                logger.warning("run %s broke SLA rule %r of %s (%s %g s): %s", f.run_id, rule.name, f.workflow_id,
                               breach.limit, breach.limit_s, rule.action)
        return later

    def forget_alerts(self, rid: str, rules: tuple[SlaRule, ...]) -> None:
        """A run that ended: drop its alerts whose action is over (pending ones finish first)."""
        alerts = self.b.sla_alerts_of([f"{rid} {rule.name}" for rule in rules])
        over = [a for a, alert in alerts.items() if alert.get("state") in ("done", "failed")]
        self.b.drop_alerts(over)

    def wait_hooks(self) -> None:
        """Named waits' events to ``waits_webhook_url`` (``docs/waits.md``), posted by :meth:`act`."""
        url = self.s.waits_webhook_url
        if url:
            self.counts["wait_hooks"] = self.b.schedule_wait_hooks(url, limit=10 * self.s.sweep_batch)

    def act(self) -> None:
        """Do the due alert actions: webhooks on this process's threads, the others here."""
        from .alerts import deliveries

        pool = deliveries()
        room = min(pool.room(), self.s.sweep_batch)
        if room <= 0:
            return
        # Held long enough for every webhook this process takes to be tried once.
        hold = int((pool.max_in_flight * self.s.sla_webhook_timeout_s + 30) * 1000)
        ids = self.b.claim_alerts(limit=room, hold_ms=hold)
        alerts = self.b.sla_alerts_of(ids)
        ended: dict[str, int] = {}
        for aid in ids:
            alert = alerts.get(aid)
            if alert is None:
                self.b.drop_alerts([aid])
                continue
            if alert.get("state") != "pending":  # over already: off the outbox
                self.b.update_alert(aid, alert)
                continue
            self.counts["sla_actions"] += 1
            if alert["action"] == "webhook":
                pool.submit(self.b, self.s, aid, alert)
                continue
            try:
                outcome = perform(self.engine, alert)
            except Exception as exc:
                attempt = int(alert.get("attempts") or 0) + 1
                alert.update(attempts=attempt, last_error=f"{type(exc).__name__}: {exc}"[:500])
                logger.error("SLA rule %r: %s of run %s failed (attempt %d): %s", alert["rule"], alert["action"],
                             alert["run_id"], attempt, alert["last_error"])
                self.b.update_alert(aid, alert, retry_at_ms=self.now + min(300_000, 1000 * 2 ** attempt))
                continue
            alert.update(state="done", outcome=outcome, done_at=_iso(self.now))
            self.b.update_alert(aid, alert)
            ended[str(alert["run_id"])] = self.now  # look at it now: no longer stuck once it ended
            logger.warning("SLA rule %r: run %s %s", alert["rule"], alert["run_id"], outcome)
        self.b.schedule_looks(ended)
        if ended:
            self.looks_of(list(ended))

    def looks_of(self, ids: list[str]) -> None:
        """Look at these runs at once (after an action ended them)."""
        entries = self.b.stuck_entries(ids)
        for rid in ids:
            try:
                at = self.look(rid, entries.get(rid))
            except Exception as exc:
                logger.error("stuck detector: cannot look at run %s: %s", rid, exc)
                continue
            if at is None:
                self.b.drop_looks([rid])
            else:
                self.b.schedule_looks({rid: at})


def detect_stuck(engine: Any) -> dict[str, int]:
    """One pass of the detector (the end of :meth:`~workers.engine.Engine.sweep`); counts of what it did.

    Never raises: a failure is logged, and the next sweep carries on from the cursors."""
    detector = _Detector(engine)
    for step in (detector.windows, detector.looks, detector.wait_hooks, detector.act):
        try:
            step()
        except Exception as exc:
            logger.error("stuck detector: %s failed: %s: %s", step.__name__, type(exc).__name__, exc)
    return dict(detector.counts)


# -- reading the stuck runs (the CLI's ``stuck``, ``doctor``) -------------------------------------------


def stuck_runs(backend: Any, *, cause: str | None = None, older_than_s: float = 0.0, limit: int = 1000
               ) -> dict[str, Any]:
    """The runs found stuck, grouped by cause (oldest first), stuck since ``older_than_s`` or
    longer: ``{"now", "total", "causes": {cause: [entry, ...]}}``. Index reads only."""
    if cause is not None and cause not in CAUSES:
        raise ValueError(f"unknown cause {cause!r}; one of {', '.join(CAUSES)}")
    now = backend.time_ms()
    found = backend.list_stuck([cause] if cause else list(CAUSES), by_ms=now - int(older_than_s * 1000),
                               limit=limit)
    for rows in found.values():
        for row in rows:
            row["stuck_for_s"] = round(max(0, now - int(row.get("since_ms") or now)) / 1000, 1)
    return {"now": _iso(now), "total": sum(len(rows) for rows in found.values()), "causes": found}


def stuck_counts(backend: Any) -> dict[str, int]:
    """Cause -> how many runs are stuck for it (causes with none left out); one round trip."""
    return dict(backend.count_stuck(list(CAUSES)))
