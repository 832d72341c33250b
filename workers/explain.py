"""Why a run does not move: one pure function from stored facts to a :class:`Diagnosis`.

The one place that knows it (``docs/operations.md``, "Why is this run not moving?"): the CLI's
``explain``, ``Client.explain``, and later the console, the stuck-run detector and the metrics
call it; none re-derives it. :func:`diagnose` reads only a :class:`Facts` snapshot, so it is
tested on constructed facts; :mod:`workers.fleet` gathers the facts from Redis and the broker
in a bounded number of commands.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any

__all__ = ["Code", "Diagnosis", "Facts", "diagnose", "BACKLOG_MIN", "OVERDUE_GRACE_MS"]

#: Messages ahead of a run's message in its queue from which it is called a backlog.
BACKLOG_MIN = 20
#: Milliseconds a timer may be past due before it is called overdue (a sweep period or two).
OVERDUE_GRACE_MS = 5000


class Code(str, Enum):
    """Why a run is where it is. New codes are added at the end; a code never changes meaning."""

    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    WAITING_USER = "WAITING_USER"
    WAITING_EVENT = "WAITING_EVENT"
    WAITING_CHILD = "WAITING_CHILD"
    WAITING_TIMER = "WAITING_TIMER"
    WAITING_JOB = "WAITING_JOB"
    TIMER_OVERDUE = "TIMER_OVERDUE"
    LEASE_EXPIRED = "LEASE_EXPIRED"
    NO_CONSUMER = "NO_CONSUMER"
    BACKLOG = "BACKLOG"
    RETRY_BACKOFF = "RETRY_BACKOFF"
    ORPHANED = "ORPHANED"
    BROKER_UNREACHABLE = "BROKER_UNREACHABLE"
    MOVING = "MOVING"
    POISONED = "POISONED"
    ADMISSION_DEFERRED = "ADMISSION_DEFERRED"
    BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"


@dataclass(frozen=True)
class Diagnosis:
    """One answer: a code, a sentence for people, since when (ISO), the facts it rests on, and
    what to do (empty when nothing needs doing). ``cause`` is the child's diagnosis for
    ``WAITING_CHILD``."""

    code: Code
    sentence: str
    since: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    action: str = ""
    cause: Diagnosis | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["code"] = self.code.value
        out["cause"] = self.cause.to_dict() if self.cause is not None else None
        return out


@dataclass(frozen=True)
class Facts:
    """What is stored about one run and what moves it, read at one moment (``now_ms``, Redis clock)."""

    run_id: str
    status: str
    workflow_id: str
    node: str | None
    updated_at: str
    now_ms: int
    #: ``WaitState.to_dict()`` of a waiting run.
    waiting: dict[str, Any] | None = None
    error: str | None = None
    #: The dispatch: ``tick``, ``effect``, ``notify`` or None, and the queue name its message goes to.
    dispatch: str | None = None
    queue: str | None = None
    effect_type: str | None = None
    attempt: int = 1
    max_attempts: int = 1
    #: False for an effect retry whose attempt has not started (it waits for its backoff).
    attempt_started: bool = True
    #: The effect runs inside the tick task that asked for it: these tools (or its type).
    inline: str | None = None
    lease_ms: int | None = None
    timer_ms: int | None = None
    last_sweep_ms: int | None = None
    #: Runs waiting on the same wait key (this one included).
    waiters: int | None = None
    #: Live processes consuming ``queue`` (from the heartbeats); None when not looked up.
    consumers: tuple[str, ...] | None = None
    #: Messages in ``queue``; None when not looked up.
    queue_depth: int | None = None
    broker_error: str | None = None
    last_failure: dict[str, Any] | None = None
    #: The error of the newest ledger record (the failed attempt of a retry).
    last_error: str | None = None
    #: The effect lease (ms) the workers use: a retry's lease is its backoff plus this, so its
    #: next attempt is due at the lease expiry minus this.
    effect_lease_ms: int = 0
    child_id: str | None = None
    child: Facts | None = None
    #: Leases of the dispatch that expired with no commit since (lost deliveries), and after
    #: how many the sweep fails the run as poisoned (0: never).
    lost: int = 0
    poison_after: int = 0
    #: The run's fencing token, and when its lease first expired since the last commit, if the
    #: sweep granted it again since.
    token: int = 0
    regranted_ms: int | None = None
    #: Why flow control deferred the run's effect (field ``a``: rule_id, label, kind, until_ms,
    #: at_ms), when it did since the last commit.
    deferred: dict[str, Any] | None = None


def _at(ms: int | None) -> str:
    if ms is None:
        return "never"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%H:%M:%S")


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat()


def _ms(iso: str | None) -> int | None:
    if not iso:
        return None
    try:
        when = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() * 1000)


def _ago(ms: int) -> str:
    s = max(0, ms) / 1000
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def diagnose(f: Facts) -> Diagnosis:
    """Why the run of ``f`` is where it is (pure: reads nothing but ``f``)."""
    since = f.updated_at
    ev: dict[str, Any] = {"run_id": f.run_id, "status": f.status, "workflow_id": f.workflow_id, "node": f.node}
    if f.status == "completed":
        return Diagnosis(Code.COMPLETED, f"completed at {_at(_ms(since))}", since, ev)
    if f.status == "cancelled":
        return Diagnosis(Code.CANCELLED, f"cancelled at {_at(_ms(since))}", since,
                         {**ev, "error": f.error})
    if f.status == "failed":
        return _failed(f, since, ev)
    if f.status == "waiting" and f.waiting is not None:
        return _waiting(f, since, ev)
    return _running(f, since, ev)


def _failed(f: Facts, since: str, ev: dict[str, Any]) -> Diagnosis:
    lf = f.last_failure or {}
    if lf.get("where") == "poisoned":
        return Diagnosis(Code.POISONED, f"failed as poisoned at {_at(_ms(since))}: {f.error or lf.get('message')}",
                         since, {**ev, "error": f.error, "last_failure": lf},
                         f"fix what kills the worker at node {f.node!r} (its logs, the OOM killer), "
                         f"then: abstractruntime retry {f.run_id}")
    where = ""
    if lf:
        where = f"; traceback kept ({lf.get('where', 'node')} {lf.get('node') or ''}, attempt {lf.get('attempt', 1)})"
    return Diagnosis(Code.FAILED, f"failed at {_at(_ms(since))}: {f.error or lf.get('message') or 'no error kept'}"
                     + where, since, {**ev, "error": f.error, "last_failure": lf or None},
                     f"abstractruntime status {f.run_id} --json shows the error; the traceback is in its "
                     "last_failure (Client.last_failure)" if lf else f"abstractruntime ledger {f.run_id}")


def _waiting(f: Facts, since: str, ev: dict[str, Any]) -> Diagnosis:
    w = f.waiting or {}
    reason, key = w.get("reason"), w.get("wait_key")
    ev = {**ev, "reason": reason, "wait_key": key}
    when = _at(_ms(since))
    if (w.get("details") or {}).get("set") == 1:
        return _waiting_named(f, since, ev, w, when)
    if reason == "user":
        prompt = f": {w['prompt']!r}" if w.get("prompt") else ""
        return Diagnosis(Code.WAITING_USER, f"waiting for a person since {when}{prompt}", since,
                         {**ev, "prompt": w.get("prompt"), "choices": w.get("choices")},
                         f"abstractruntime respond {f.run_id} ANSWER")
    if reason == "event":
        others = f" ({f.waiters} runs wait on it)" if f.waiters and f.waiters > 1 else ""
        return Diagnosis(Code.WAITING_EVENT, f"waiting for event `{key}` since {when}{others}", since,
                         {**ev, "waiters": f.waiters}, f"abstractruntime emit {key} PAYLOAD")
    if reason == "subworkflow":
        return _waiting_child(f, since, ev)
    if reason == "until":
        due = f.timer_ms if f.timer_ms is not None else _ms(w.get("until"))
        ev = {**ev, "until": w.get("until"), "timer_ms": f.timer_ms, "last_sweep_ms": f.last_sweep_ms}
        if due is not None and f.now_ms - due > OVERDUE_GRACE_MS:
            beat = f"beat last seen {_at(f.last_sweep_ms)}" if f.last_sweep_ms is not None else "no sweep has run"
            return Diagnosis(Code.TIMER_OVERDUE, f"due {_at(due)}, {_ago(f.now_ms - due)} overdue: {beat}",
                             _iso(due), ev, "start exactly one beat (abstractruntime beat) and a worker on the "
                             "timers and maintenance queues")
        return Diagnosis(Code.WAITING_TIMER, f"sleeping until {_at(due)} (since {when})", since, ev,
                         f"to wake it early: abstractruntime wake {f.run_id} --now --reason WHY")
    return Diagnosis(Code.WAITING_JOB, f"waiting for `{key}` ({reason}) since {when}", since, ev,
                     f"abstractruntime resume {f.run_id} --wait-key {key} --payload JSON")


def _waiting_named(f: Facts, since: str, ev: dict[str, Any], w: dict[str, Any], when: str) -> Diagnosis:
    """A run parked on named waits (``runtime/waitset.py``): which are open and the next timer."""
    from runtime.models import WaitState
    from runtime.waitset import describe_set, next_due_ms, open_names

    state = WaitState.from_dict(w)
    names = open_names(state)
    due = next_due_ms(state)
    nxt = f"; next reminder, escalation or deadline {_at(due)}" if due is not None else ""
    code = Code.WAITING_USER if w.get("reason") == "user" else Code.WAITING_EVENT
    first = names[0] if names else "WAIT"
    return Diagnosis(code, f"waiting {describe_set(state)} since {when}{nxt}", since,
                     {**ev, "waits": names, "next_timer_ms": due},
                     f"abstractruntime answer {f.run_id} {first} --payload JSON (list them: abstractruntime waits "
                     f"--root {f.run_id})")


def _waiting_child(f: Facts, since: str, ev: dict[str, Any]) -> Diagnosis:
    child_id = f.child_id or str((f.waiting or {}).get("wait_key") or "").removeprefix("subworkflow:")
    ev = {**ev, "child_run_id": child_id}
    if f.child is None:
        return Diagnosis(Code.WAITING_CHILD, f"waiting for child {child_id} since {_at(_ms(since))} "
                         "(child not looked at)", since, ev, f"abstractruntime explain {child_id}")
    cause = diagnose(f.child)
    inner = cause
    while inner.cause is not None:  # name the deepest run that holds things up
        inner = inner.cause
    holder = inner.evidence.get("run_id", child_id)
    return Diagnosis(Code.WAITING_CHILD, f"child {holder} {_child_phrase(inner)}", since, ev,
                     inner.action or f"abstractruntime explain {holder}", cause)


def _child_phrase(d: Diagnosis) -> str:
    """The child's sentence, read after "child r-9 ...": "waits for a person since 10:02"."""
    s = d.sentence
    for old, new in (("waiting for", "waits for"), ("sleeping", "sleeps")):
        if s.startswith(old):
            return new + s[len(old):]
    return s if d.code in (Code.COMPLETED, Code.FAILED, Code.CANCELLED) else f"{d.code.value}: {s}"


def _deferred(f: Facts, ev: dict[str, Any]) -> Diagnosis:
    """A flow-control rule holds the run's effect back (``workers/flow/gate.py``)."""
    info = f.deferred or {}
    label, kind, until = info.get("label") or info.get("rule_id"), info.get("kind"), info.get("until_ms")
    ev = {**ev, "deferred": info}
    since = _iso(info.get("at_ms")) or _iso(f.now_ms) or ""
    action = f"abstractruntime limits usage {str(info.get('rule_id') or '').split('|')[0]}"
    if kind in ("tokens", "cost_usd"):
        what = "tokens" if kind == "tokens" else "dollars"
        return Diagnosis(Code.BUDGET_EXHAUSTED, f"budget `{label}` has no {what} left this window; "
                         f"refills {_at(until)}", since, ev, action)
    place = ""
    if info.get("position"):
        place = f"; {_ordinal(int(info['position']))} of {info.get('depth')} in the queue of `{info.get('queue_key')}`"
    if kind == "queue":  # parked behind earlier work, no rule tried yet
        return Diagnosis(Code.ADMISSION_DEFERRED, f"waiting its turn in fair dispatch{place or ''}", since, ev,
                         f"abstractruntime limits usage {info.get('queue_key') or 'global'}")
    if kind == "concurrency":
        held = info.get("holders")
        limit = info.get("limit")
        first = info.get("first_holder") or {}
        who = ""
        if held is not None:
            who = f": {held} holder{'' if held == 1 else 's'}" + (f" of {limit}" if limit else "")
            if first:
                who += (f", next slot when run {first.get('run_id')}'s {first.get('what')} ends "
                        f"(its lease runs to {_at(first.get('expires_ms'))})")
            elif held == 0:
                who += ", a slot is free: the next dispatcher pass takes it"
        return Diagnosis(Code.ADMISSION_DEFERRED, f"deferred by rule `{label}`{who or ' (concurrency)'}{place}",
                         since, ev, action)
    when = f"tries again at {_at(until)}" if until else "tries again at the next pass"
    return Diagnosis(Code.ADMISSION_DEFERRED, f"deferred by rule `{label}` ({kind}); {when}{place}", since, ev,
                     action)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _lost(f: Facts) -> str:
    of = f" of {f.poison_after}" if f.poison_after else ""
    return f"; {f.lost}{of} deliveries lost" if f.lost > 0 else ""


def _running(f: Facts, since: str, ev: dict[str, Any]) -> Diagnosis:
    last = _ms(since)
    ev = {**ev, "dispatch": f.dispatch, "queue": f.queue, "lease_ms": f.lease_ms, "consumers": f.consumers,
          "queue_depth": f.queue_depth, "last_sweep_ms": f.last_sweep_ms}
    q = f.queue
    if f.dispatch is None and f.lease_ms is None:
        return Diagnosis(Code.ORPHANED, f"running at node {f.node!r} but no message is expected and no lease "
                         "is held: nothing will move it", since, ev,
                         f"abstractruntime cancel {f.run_id}, or start it again")
    if f.broker_error is not None:
        return Diagnosis(Code.BROKER_UNREACHABLE, f"the broker cannot be reached: {f.broker_error}", since,
                         {**ev, "broker_error": f.broker_error}, "start the broker, or fix ABSTRACTRUNTIME_BROKER_URL")
    if f.inline is not None and (f.lease_ms is None or f.lease_ms > f.now_ms):
        return Diagnosis(Code.MOVING, f"running {f.inline} inline, in the tick task that asked for it "
                         f"(attempt {f.attempt}/{f.max_attempts})", since, {**ev, "inline": f.inline})
    if q is not None and f.consumers is not None and not f.consumers:
        return Diagnosis(Code.NO_CONSUMER, f"no worker consumes queue `{q}`", since, ev,
                         f"start one: abstractruntime worker --queues {q}")
    if f.lease_ms is not None and f.lease_ms <= f.now_ms:
        late = f.last_sweep_ms is None or f.now_ms - f.last_sweep_ms > OVERDUE_GRACE_MS
        beat = (f"no recovery sweep since {_at(f.last_sweep_ms)}" if f.last_sweep_ms is not None
                else "no recovery sweep has run") if late else \
            f"the next sweep re-dispatches it with token {f.token + 1} to queue `{q}`"
        first = f.regranted_ms if f.regranted_ms is not None else f.lease_ms  # the clock of a stuck run
        return Diagnosis(Code.LEASE_EXPIRED, f"lease expired {_at(f.lease_ms)} (fencing token {f.token}), "
                         f"{beat}{_lost(f)}", _iso(first), {**ev, "lost": f.lost, "poison_after": f.poison_after,
                                                                "token": f.token},
                         "start exactly one beat: abstractruntime beat" if late
                         else "if this stays, read the workers' logs")
    if f.deferred is not None and f.dispatch in ("effect", "tick"):
        return _deferred(f, ev)
    if f.regranted_ms is not None:  # recovering: the sweep sent it again, no commit since
        return Diagnosis(Code.LEASE_EXPIRED, f"lease expired {_at(f.regranted_ms)}, re-dispatched with token "
                         f"{f.token} to queue `{q}`{_lost(f)}", _iso(f.regranted_ms),
                         {**ev, "lost": f.lost, "poison_after": f.poison_after, "token": f.token},
                         "nothing: a worker takes it over; if this stays, read the workers' logs")
    if f.dispatch == "effect" and not f.attempt_started and f.lease_ms is not None:
        next_ms = f.lease_ms - f.effect_lease_ms
        why = f" ({f.last_error})" if f.last_error else ""
        return Diagnosis(Code.RETRY_BACKOFF, f"attempt {f.attempt - 1}/{f.max_attempts} failed{why}, "
                         f"next at {_at(next_ms)}", since, {**ev, "attempt": f.attempt, "next_ms": next_ms,
                                                           "last_error": f.last_error})
    if f.queue_depth is not None and f.queue_depth >= BACKLOG_MIN:
        return Diagnosis(Code.BACKLOG, f"{f.queue_depth} messages ahead in `{q}`", since, ev,
                         f"add workers on queue {q}")
    what = f"{f.effect_type} attempt {f.attempt}/{f.max_attempts}" if f.dispatch == "effect" else f.dispatch
    where = f" on `{q}`" if q else ""
    ago = _ago(f.now_ms - last) if last is not None else "?"
    return Diagnosis(Code.MOVING, f"last commit {ago} ago; {what} expected{where}", since, ev)
