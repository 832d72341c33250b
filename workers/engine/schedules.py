"""Schedules under the Celery driver (``workers/schedules.py`` defines them): setting them, and
the sweep's step that fires the due ones.

A fire first starts its run, under the id :func:`~workers.schedules.run_id_for` makes of the
schedule's name and the fire's time (an explicit id must be free, decision D7: a second start
of the same fire is refused by the store), then moves the schedule to its next fire by a
compare-and-set. A sweep that loses the compare-and-set (another beat's sweep moved it) reads
the schedule again: its start, if any, was the same run. A process that dies between the two
leaves the schedule due, and the next sweep finds the run started.
"""

from __future__ import annotations

from typing import Any

from runtime import RunStatus
from runtime._clock import iso_ms
from runtime.errors import RunAlreadyExists, RunNotFound, WorkflowNotRegistered

from ..flow.rules import BudgetExceeded
from ..schedules import (
    MAX_BACKFILL,
    InvalidSchedule,
    Schedule,
    UnknownSchedule,
    fire_times,
    jitter_ms,
    next_fire_ms,
    run_id_for,
)
from .base import logger
from .producer import ProducerOperations

__all__ = ["Schedules", "SCHEDULE_VARS"]

#: The run's vars key telling a run started by a schedule which one and for what time.
SCHEDULE_VARS = "_schedule"
#: How many fires of one schedule one sweep handles at most (catching up after beats were down).
MAX_FIRES_PER_SWEEP = 100
#: While a fire is buffered (``buffer_one``), the schedule is due this long after each look
#: (0: every sweep looks whether the active run ended).
BUFFER_POLL_MS = 0


def _iso(ms: int | None) -> str | None:
    return iso_ms(ms) if ms is not None else None


def _fresh_state(next_ms: int | None) -> dict[str, Any]:
    return {"next_fire_ms": next_ms, "last_fire_ms": None, "last_run_id": None, "last_outcome": None,
            "buffered_ms": None, "fires": 0, "skipped": 0, "missed": 0}


class Schedules(ProducerOperations):
    """``Engine.add_schedule`` and the rest, and ``Engine.fire_schedules`` (the sweep's step)."""

    # -- setting them --------------------------------------------------------------------------

    def add_schedule(self, schedule: Schedule, *, replace: bool = False) -> dict[str, Any]:
        """Store ``schedule`` (its workflow must be registered here); its first fire is the first
        time of its cron after now (Redis clock). :class:`~stores.redis.schedules.ScheduleExists`
        when the name is taken and not ``replace``."""
        self._workflow(schedule.workflow_id)
        now = self.backend.time_ms()
        nxt = next_fire_ms(schedule, now)
        entry = {"spec": schedule.to_dict(), "state": _fresh_state(nxt)}
        self.backend.save_schedule(schedule.name, entry, None if schedule.paused else nxt + jitter_ms(schedule, nxt),
                                   replace=replace)
        return self.describe_schedule(entry, now)

    def _loaded(self, name: str) -> tuple[bytes, dict[str, Any], Schedule]:
        found = self.backend.load_schedule(name)
        if found is None:
            raise UnknownSchedule(name)
        raw, entry = found
        return raw, entry, Schedule.from_dict(entry["spec"])

    def set_paused(self, name: str, paused: bool) -> dict[str, Any]:
        """Pause a schedule (no fire until resumed) or resume it: the next fire is then the first
        time after now; the fires of the pause are not caught up."""
        while True:
            raw, entry, spec = self._loaded(name)
            now = self.backend.time_ms()
            entry["spec"] = {**entry["spec"], "paused": paused}
            state = entry["state"]
            due = None
            if not paused:
                state["next_fire_ms"] = next_fire_ms(spec, now)
                due = state["next_fire_ms"] + jitter_ms(spec, state["next_fire_ms"])
                if state.get("buffered_ms") is not None:  # kept through the pause: looked at from now
                    due = now
            if self.backend.swap_schedule(name, raw, entry, due):
                return self.describe_schedule(entry, now)

    def list_schedules(self) -> list[dict[str, Any]]:
        now = self.backend.time_ms()
        out = []
        for name in self.backend.schedule_names():
            found = self.backend.load_schedule(name)
            if found is not None:
                out.append(self.describe_schedule(found[1], now))
        return out

    def get_schedule(self, name: str) -> dict[str, Any]:
        return self.describe_schedule(self._loaded(name)[1], self.backend.time_ms())

    @staticmethod
    def describe_schedule(entry: dict[str, Any], now_ms: int) -> dict[str, Any]:
        st = entry["state"]
        nxt = st.get("next_fire_ms")
        return {**entry["spec"], "next_fire": _iso(nxt), "last_fire": _iso(st.get("last_fire_ms")),
                "last_run_id": st.get("last_run_id"), "last_outcome": st.get("last_outcome"),
                "buffered_fire": _iso(st.get("buffered_ms")), "fires": st.get("fires", 0),
                "skipped": st.get("skipped", 0), "missed": st.get("missed", 0),
                "overdue_s": round(max(0, now_ms - nxt) / 1000, 1) if nxt is not None and not entry["spec"]["paused"]
                else 0.0}

    def trigger_schedule(self, name: str) -> str:
        """Start a run of the schedule now, by hand (its id ends in ``:trigger``); the schedule's
        own fires and overlap policy are not changed by it."""
        _raw, _entry, spec = self._loaded(name)
        now = self.backend.time_ms()
        return self._start_fire(spec, now, run_id_for(name, now, trigger=True))

    def backfill_schedule(self, name: str, from_ms: int, to_ms: int) -> dict[str, Any]:
        """Start the run of every fire time of the schedule in [``from_ms``, ``to_ms``] that has
        none (the same run ids as the fires: a fire that ran is not run again)."""
        _raw, _entry, spec = self._loaded(name)
        if to_ms < from_ms:
            raise InvalidSchedule("to", "is before from")
        times = []
        for t in spec.times(from_ms - 1):
            if t > to_ms:
                break
            times.append(t)
            if len(times) > MAX_BACKFILL:
                raise InvalidSchedule("to", f"more than {MAX_BACKFILL} fires between from and to")
        started, existing = [], []
        for t in times:
            rid = run_id_for(name, t)
            try:
                self.create(self._workflow(spec.workflow_id), vars=self._vars(spec, t), run_id=rid)
                started.append(rid)
            except RunAlreadyExists:
                existing.append(rid)
        return {"schedule": name, "fires": len(times), "started": started, "existing": len(existing)}

    # -- firing ---------------------------------------------------------------------------------

    @staticmethod
    def _vars(spec: Schedule, fire_ms: int) -> dict[str, Any]:
        return {**spec.vars, SCHEDULE_VARS: {"name": spec.name, "scheduled_at": _iso(fire_ms)}}

    def _start_fire(self, spec: Schedule, fire_ms: int, run_id: str | None = None) -> str:
        """Start the run of one fire; an existing one (the same fire, started by another sweep) is fine."""
        rid = run_id or run_id_for(spec.name, fire_ms)
        try:
            self.create(self._workflow(spec.workflow_id), vars=self._vars(spec, fire_ms), run_id=rid)
        except RunAlreadyExists:
            pass
        return rid

    def _active(self, run_id: str | None) -> bool:
        if not run_id:
            return False
        try:
            state = self.backend.runs.load(run_id)
        except RunNotFound:
            return False
        return state is not None and not RunStatus(state.status).is_terminal

    def fire_schedules(self) -> dict[str, int]:
        """Fire every due schedule (the sweep calls it; safe on many sweeps at once)."""
        counts: dict[str, int] = {}
        for name in self.backend.due_schedules(self.backend.time_ms(), self.settings.sweep_batch):
            try:
                self._fire_one(name, counts)
            except Exception as exc:  # one broken schedule must not stop the others
                logger.error("schedule %s: cannot fire: %s: %s", name, type(exc).__name__, exc)
                counts["schedule_errors"] = counts.get("schedule_errors", 0) + 1
        return counts

    def _fire_one(self, name: str, counts: dict[str, int]) -> None:
        for _ in range(MAX_FIRES_PER_SWEEP):
            found = self.backend.load_schedule(name)
            if found is None:
                self.backend.delete_schedule(name)
                return
            raw, entry = found
            spec = Schedule.from_dict(entry["spec"])
            st = dict(entry["state"])
            if spec.paused:
                self.backend.swap_schedule(name, raw, entry, None)
                return
            now = self.backend.time_ms()
            outcome = self._decide(spec, st, now)
            if outcome is None:  # nothing due; keep the due index right (a buffered fire polls)
                due = st["next_fire_ms"] + jitter_ms(spec, st["next_fire_ms"])
                if st.get("buffered_ms") is not None:
                    due = min(due, now + BUFFER_POLL_MS)
                self.backend.client.zadd(self.backend.keys.schedules_due(), {name: due})
                return
            entry = {"spec": entry["spec"], "state": st}
            due = st["next_fire_ms"] + jitter_ms(spec, st["next_fire_ms"])
            if st.get("buffered_ms") is not None:
                due = min(due, now + BUFFER_POLL_MS)
            if self.backend.swap_schedule(name, raw, entry, due):
                counts[f"schedule_{outcome}"] = counts.get(f"schedule_{outcome}", 0) + 1
                if outcome != "started":
                    logger.info("schedule %s: fire of %s %s", name, _iso(st.get("last_fire_ms")), outcome)

    def _decide(self, spec: Schedule, st: dict[str, Any], now: int) -> str | None:
        """Apply what is due of ``spec`` to its state ``st`` (starting a run if it says so) and say
        what it was: ``started``, ``skipped``, ``buffered``, ``missed``, ``refused``; None if nothing."""
        buffered = st.get("buffered_ms")
        if buffered is not None and not self._active(st.get("last_run_id")):
            st.update(buffered_ms=None, last_run_id=self._start_fire(spec, buffered), last_fire_ms=buffered,
                      last_outcome="started (buffered)", fires=st.get("fires", 0) + 1)
            return "started"
        fire = st.get("next_fire_ms")
        if fire is None or fire + jitter_ms(spec, fire) > now:
            return None
        catchup_ms = int(spec.catchup_s * 1000)
        if now - fire > catchup_ms:  # beats were down: the fires older than the window are skipped, at once
            first_in_window = next_fire_ms(spec, now - catchup_ms - 1)
            st.update(next_fire_ms=first_in_window, last_outcome=f"missed from {_iso(fire)}",
                      missed=st.get("missed", 0) + sum(1 for _ in _until(spec, fire, first_in_window)))
            return "missed"
        st.update(next_fire_ms=next_fire_ms(spec, fire), last_fire_ms=fire)
        if self._active(st.get("last_run_id")) and spec.overlap != "allow_all":
            if spec.overlap == "skip" or (spec.overlap == "buffer_one" and buffered is not None):
                st.update(last_outcome="skipped (previous run active)", skipped=st.get("skipped", 0) + 1)
                return "skipped"
            if spec.overlap == "buffer_one":
                st.update(buffered_ms=fire, last_outcome="buffered (previous run active)")
                return "buffered"
            self.cancel(st["last_run_id"], reason=f"schedule {spec.name}: a new fire (overlap cancel_other)",
                        actor=f"schedule:{spec.name}")
        try:
            st.update(last_run_id=self._start_fire(spec, fire), last_outcome="started", fires=st.get("fires", 0) + 1)
        except BudgetExceeded as exc:
            st.update(last_outcome=f"refused by flow control: {exc}")
            return "refused"
        except WorkflowNotRegistered as exc:
            st.update(last_outcome=f"not started: {exc}")
            logger.error("schedule %s: %s", spec.name, exc)
            return "refused"
        return "started"


def _until(spec: Schedule, first: int, end: int) -> Any:
    """The fire times from ``first`` (included) to ``end`` (excluded), at most 10^6."""
    yield first
    for n, t in enumerate(fire_times(spec.cron, spec.timezone, first)):
        if t >= end or n >= 10**6:
            return
        yield t
