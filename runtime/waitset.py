"""Named waits: several questions (or events) a run waits on at once, each with its deadline.

A node opens a *wait set* with the ``open_waits`` effect (or ``ask_user`` with a ``waits``
list)::

    Effect(EffectType.OPEN_WAITS, {"waits": [{"name": "legal", "prompt": "Approve?", "deadline": "10s"},
                                             {"name": "comment", "prompt": "Anything to add?"}],
                                   "mode": "all"}, result_key="answers")    # or "any", or n_of(2)

The run parks until the mode is met; the node it resumes at finds ``vars[result_key]`` a dict
name -> answer. A wait that passed its deadline with no answer holds its ``on_timeout``
default, or the marker ``{"$expired": <deadline ISO>}``; waits closed because the mode was met
first (``superseded``) are left out. The 0.2.0 single waits (``ask_user``, ``wait_event``) are
not sets and keep their exact behaviour; ``respond`` or ``resume`` on a set answers its one
open wait, and raises :class:`AmbiguousWait` when several are open.

Opening a set (the payload, checked field by field; ``docs/waits.md`` lists the fields) is
``runtime/waitspec.py``; this module reads and changes an open set. All of it is pure: the
driver passes the time (epoch ms, the Redis clock under Celery), commits the records
returned, and writes the events. The set lives in the run's
``WaitState.details`` (``{"set": 1, "mode", "need", "order", "waits": {name: wait}, "answers"}``),
so a wait set is checked, versioned and chained with the run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._clock import iso_ms
from ._json import ensure_json
from .answers import InvalidAnswer, check_answer
from .errors import RunError, RunNotWaiting
from .models import RunState, RunStatus, StepRecord, WaitState
from .waitspec import InvalidWaitSpec, handle_open_waits, n_of, open_set

__all__ = [
    "n_of", "InvalidWaitSpec", "UnknownWait", "AmbiguousWait", "WaitClosed", "WaitExpired", "NotAssignee",
    "AnswerTooLarge", "Delivery", "Fired", "is_wait_set", "open_names", "handle_open_waits", "deliver",
    "fire_due", "next_due_ms", "wait_named", "name_for_key", "delivery_record", "describe_set",
    "target_of", "recorded_closure", "recorded", "opened_events", "open_set", "MAX_ANSWER_BYTES", "DIGEST_OVER_BYTES",
    "EXPIRED", "DELIVERY_TYPES",
]

#: The largest answer accepted, in bytes of compact JSON (larger: :class:`AnswerTooLarge`).
MAX_ANSWER_BYTES = 64 * 1024
#: An answer over this size is recorded in the ledger as its SHA-256 digest and size.
DIGEST_OVER_BYTES = 4 * 1024
#: The key of the marker a wait that expired without a default leaves in the answers.
EXPIRED = "$expired"
#: Ledger record types written by deliveries and wait timers (the in-process runtime writes none).
DELIVERY_TYPES = frozenset({"wait_answer", "wait_resume", "wait_emit", "wait_reminder", "wait_escalated",
                            "wait_expired"})

# -- errors ----------------------------------------------------------------------------------------

class UnknownWait(RunError, KeyError):
    """An answer names a wait the run does not have open; ``open`` lists the ones it has."""

    def __init__(self, run_id: str, name: str, open: list[str]) -> None:
        self.run_id, self.name, self.open = run_id, name, list(open)
        listed = ", ".join(repr(n) for n in open) if open else "none"
        super().__init__(f"Run '{run_id}' has no open wait {name!r}; open waits: {listed}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class AmbiguousWait(RunError, ValueError):
    """``respond`` (or a keyless ``resume``) with several waits open: name one with ``answer``."""

    def __init__(self, run_id: str, open: list[str]) -> None:
        self.run_id, self.open = run_id, list(open)
        super().__init__(f"Run '{run_id}' waits on {len(open)} waits ({', '.join(open)}); answer one by name: "
                         f"client.answer(run_id, wait_name, payload, answered_by)")


class WaitClosed(RunError, ValueError):
    """The wait was closed already: answered by ``answered_by`` at ``at`` (or expired, superseded)."""

    def __init__(self, run_id: str, name: str, answered_by: str | None, at: str | None, state: str = "answered"
                 ) -> None:
        self.run_id, self.name, self.answered_by, self.at, self.state = run_id, name, answered_by, at, state
        who = f" by {answered_by}" if answered_by else ""
        super().__init__(f"Wait {name!r} of run '{run_id}' is closed: {state}{who} at {at}")


class WaitExpired(WaitClosed):
    """An answer came after the wait's deadline (its expiry may not be processed yet)."""

    def __init__(self, run_id: str, name: str, deadline: str) -> None:
        super().__init__(run_id, name, None, deadline, "expired")


class NotAssignee(RunError, PermissionError):
    """The wait enforces its assignees and the answerer is not one of them."""

    def __init__(self, run_id: str, name: str, answered_by: str, assignees: list[str]) -> None:
        self.run_id, self.name, self.answered_by, self.assignees = run_id, name, answered_by, list(assignees)
        super().__init__(f"{answered_by!r} may not answer wait {name!r} of run '{run_id}'; its assignees: "
                         f"{', '.join(assignees) or 'none'}")


class AnswerTooLarge(RunError, ValueError):
    def __init__(self, run_id: str, name: str, size: int, limit: int) -> None:
        self.run_id, self.name, self.size, self.limit = run_id, name, size, limit
        super().__init__(f"The answer to wait {name!r} of run '{run_id}' is {size} bytes of JSON; "
                         f"at most {limit} are accepted")


# -- reading a set ---------------------------------------------------------------------------------

def is_wait_set(w: WaitState | None) -> bool:
    return w is not None and isinstance(w.details, dict) and w.details.get("set") == 1


def _set(run: RunState) -> dict[str, Any]:
    if run.status != RunStatus.WAITING or not is_wait_set(run.waiting):
        raise RunNotWaiting(f"Run '{run.run_id}' has no open waits (status={RunStatus(run.status).value})",
                            run_id=run.run_id, status=run.status)
    assert run.waiting is not None and run.waiting.details is not None
    return run.waiting.details


def open_names(w: WaitState | None) -> list[str]:
    """The names of the set's open waits, in the order they were opened."""
    if not is_wait_set(w):
        return []
    assert w is not None and w.details is not None
    waits = w.details["waits"]
    return [n for n in w.details["order"] if waits[n]["state"] == "open"]


def wait_named(w: WaitState | None, name: str) -> dict[str, Any] | None:
    if not is_wait_set(w):
        return None
    assert w is not None and w.details is not None
    found: dict[str, Any] | None = w.details["waits"].get(name)
    return found


def name_for_key(w: WaitState | None, key: str) -> str | None:
    """The open wait of the set that ``key`` (its wait key) names, if any."""
    for name in open_names(w):
        if wait_named(w, name)["wait_key"] == key:  # type: ignore[index]
            return name
    return None


def next_due_ms(w: WaitState | None) -> int | None:
    """When the set's next timer (a reminder, an escalation step, a deadline) is due."""
    due = [t["at_ms"] for n in open_names(w) for t in wait_named(w, n)["timers"]  # type: ignore[index]
           if not t["fired"]]
    return min(due) if due else None


def describe_set(w: WaitState) -> str:
    d = w.details or {}
    names = open_names(w)
    need = {"all": f"all {len(d['order'])}", "any": "any one"}.get(d["mode"], f"{d['need']} of {len(d['order'])}")
    return f"for {need} of its named waits (open: {', '.join(names) or 'none'})"

# -- records and events ----------------------------------------------------------------------------

def recorded(payload: Any) -> Any:
    """What a delivery record keeps of ``payload``: itself, or ``{sha256, bytes}`` when large."""
    raw = json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
    if len(raw) <= DIGEST_OVER_BYTES:
        return payload
    return {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}


def delivery_record(run: RunState, kind: str, wait: str | None, *, by: str | None, at_ms: int,
                    result: dict[str, Any], node: str | None = None) -> StepRecord:
    """A ledger record of what reached a wait (``wait_answer``, ``wait_emit``...): who, which, when.
    ``node``: the node that waited (default: the run's current node)."""
    record = StepRecord.start(run=run, node_id=node or run.current_node or "", effect=None, started_at=iso_ms(at_ms))
    record.effect = {"type": kind, "payload": {"wait": wait}, "result_key": None}
    if by is not None:
        record.actor_id = by
    record.finish_success({"wait": wait, "by": by, "at": iso_ms(at_ms), **result}, ended_at=iso_ms(at_ms))
    return record


def _event(run: RunState, kind: str, name: str, w: dict[str, Any], at_ms: int, **extra: Any) -> dict[str, Any]:
    return {"event": kind, "run_id": run.run_id, "workflow_id": run.workflow_id, "wait": name,
            "assignees": w["assignees"], "level": w["level"],
            "deadline": iso_ms(w["deadline_ms"]) if w["deadline_ms"] is not None else None, "at": iso_ms(at_ms),
            **extra}


@dataclass
class Delivery:
    """What an answer did: the records to commit, the events to publish, whether the run resumed."""

    records: list[StepRecord] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    resumed: bool = False
    #: The answer was a retry of one already recorded under the same ``answer_id``: nothing to commit.
    duplicate: bool = False


def _resolve(run: RunState, d: dict[str, Any], at_ms: int, goto: str | None = None) -> list[str]:
    """Close what is still open as superseded, hand the answers to the node, set the run running."""
    superseded = []
    for name in d["order"]:
        w = d["waits"][name]
        if w["state"] == "open":
            w["state"], w["closed"] = "superseded", {"at": iso_ms(at_ms)}
            superseded.append(name)
    wait = run.waiting
    assert wait is not None
    if wait.result_key:
        from .step import set_nested

        set_nested(run.vars, wait.result_key, dict(d["answers"]))
    target = goto or wait.resume_to_node
    if target:
        run.current_node = target
    run.status, run.waiting = RunStatus.RUNNING, None
    run.updated_at = iso_ms(at_ms)
    return superseded


def _closed_enough(d: dict[str, Any]) -> bool:
    closed = sum(1 for n in d["order"] if d["waits"][n]["state"] in ("answered", "expired"))
    return closed >= int(d["need"])


def deliver(run: RunState, name: str, payload: Any, *, by: str | None, now_ms: int, answer_id: str | None = None,
            kind: str = "wait_answer", max_bytes: int = MAX_ANSWER_BYTES) -> Delivery:
    """Answer the open wait ``name`` of ``run``'s set. Checks everything before changing anything:
    :class:`UnknownWait`, :class:`WaitClosed` (or :class:`WaitExpired` past the deadline),
    :class:`NotAssignee`, :class:`AnswerTooLarge`, :class:`InvalidAnswer` against the schema.
    A retry with the ``answer_id`` the wait was answered with gives ``duplicate=True``."""
    d = _set(run)
    w = d["waits"].get(name)
    if w is None:
        raise UnknownWait(run.run_id, name, open_names(run.waiting))
    if w["state"] != "open":
        closed = w["closed"] or {}
        if answer_id is not None and closed.get("answer_id") == answer_id:
            return Delivery(duplicate=True)
        raise WaitClosed(run.run_id, name, closed.get("by"), closed.get("at"), w["state"])
    if w["deadline_ms"] is not None and now_ms >= w["deadline_ms"]:
        raise WaitExpired(run.run_id, name, iso_ms(w["deadline_ms"]))
    if w["enforce"] and by not in w["assignees"]:
        raise NotAssignee(run.run_id, name, str(by), w["assignees"])
    ensure_json(payload, "payload")
    size = len(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode())
    if size > max_bytes:
        raise AnswerTooLarge(run.run_id, name, size, max_bytes)
    if w["schema"] is not None:
        try:
            check_answer(w["schema"], payload)
        except InvalidAnswer as exc:
            raise InvalidAnswer(exc.path, exc.problem, run_id=run.run_id) from None
    node = run.current_node
    w["state"] = "answered"
    w["closed"] = {"by": by, "at": iso_ms(now_ms), **({"answer_id": answer_id} if answer_id is not None else {})}
    d["answers"][name] = payload
    out = Delivery(events=[_event(run, "wait.answered", name, w, now_ms, by=by)])
    result: dict[str, Any] = {"answer": recorded(payload)}
    if answer_id is not None:
        result["answer_id"] = answer_id
    if _closed_enough(d):
        result["superseded"] = _resolve(run, d, now_ms)
        result["resumed"] = out.resumed = True
    else:
        run.updated_at = iso_ms(now_ms)
    out.records.append(delivery_record(run, kind, name, by=by, at_ms=now_ms, result=result, node=node))
    return out


def opened_events(run: RunState, now_ms: int) -> list[dict[str, Any]]:
    """One ``wait.opened`` event per wait of the set ``run`` just parked on."""
    w = run.waiting
    return [_event(run, "wait.opened", n, wait_named(w, n), now_ms, prompt=wait_named(w, n)["prompt"])  # type: ignore[arg-type,index]
            for n in open_names(w)]


@dataclass
class Fired:
    """What the due timers of a set did (see :func:`fire_due`)."""

    records: list[StepRecord] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    resumed: bool = False
    #: Set when a wait whose ``on_timeout`` is ``fail`` expired: the driver fails the run with it.
    fail: str | None = None


def fire_due(run: RunState, now_ms: int) -> Fired:
    """Fire every timer of the run's open waits due at ``now_ms``, in time order; each once (it
    is marked fired in the state the driver commits), never before its time."""
    out = Fired()
    if run.status != RunStatus.WAITING or not is_wait_set(run.waiting):
        return out
    d = run.waiting.details  # type: ignore[union-attr]
    assert d is not None
    due = sorted(((t["at_ms"], n, t) for n in open_names(run.waiting) for t in d["waits"][n]["timers"]
                  if not t["fired"] and t["at_ms"] <= now_ms), key=lambda x: x[0])
    for at_ms, name, t in due:
        w = d["waits"][name]
        if w["state"] != "open":
            continue  # an earlier timer of this batch closed it (or the set)
        t["fired"] = True
        lateness = now_ms - at_ms
        if t["kind"] == "reminder":
            out.events.append(_event(run, "wait.reminder", name, w, now_ms, timer=t["id"]))
            out.records.append(delivery_record(run, "wait_reminder", name, by=None, at_ms=now_ms,
                                               result={"timer": t["id"], "due": iso_ms(at_ms), "late_ms": lateness}))
        elif t["kind"] == "escalation":
            w["level"] = t["level"]
            if t["reassign"]:
                w["assignees"] = list(t["reassign"])
            out.events.append(_event(run, "wait.escalated", name, w, now_ms, timer=t["id"], notify=t["notify"]))
            out.records.append(delivery_record(run, "wait_escalated", name, by=None, at_ms=now_ms, result={
                "timer": t["id"], "due": iso_ms(at_ms), "late_ms": lateness, "level": t["level"],
                "assignees": w["assignees"], "notify": t["notify"]}))
        else:
            out_ = _expire(run, d, name, w, t, at_ms, now_ms, out)
            if out_:
                return out
    if not out.resumed and out.fail is None and (out.records or due):
        run.updated_at = iso_ms(now_ms)
    return out


def _expire(run: RunState, d: dict[str, Any], name: str, w: dict[str, Any], t: dict[str, Any], at_ms: int,
            now_ms: int, out: Fired) -> bool:
    """A deadline: the wait closes as its ``on_timeout`` says. True when the set is over."""
    rule, node = w["on_timeout"], run.current_node
    w["state"], w["closed"] = "expired", {"at": iso_ms(at_ms)}
    result: dict[str, Any] = {"timer": t["id"], "due": iso_ms(at_ms), "late_ms": now_ms - at_ms,
                              "on_timeout": rule["do"]}
    out.events.append(_event(run, "wait.expired", name, w, now_ms, on_timeout=rule["do"]))
    if rule["do"] == "fail":
        out.records.append(delivery_record(run, "wait_expired", name, by=None, at_ms=now_ms, result=result, node=node))
        out.fail = f"Wait {name!r} passed its deadline ({iso_ms(at_ms)}) with no answer (on_timeout: fail)"
        return True
    d["answers"][name] = rule["answer"] if rule["do"] == "answer" else {EXPIRED: iso_ms(at_ms)}
    if rule["do"] == "goto" or _closed_enough(d):
        result["superseded"] = _resolve(run, d, now_ms, goto=rule.get("node"))
        result["resumed"] = out.resumed = True
    out.records.append(delivery_record(run, "wait_expired", name, by=None, at_ms=now_ms, result=result, node=node))
    return out.resumed


def recorded_closure(records: Iterable[Mapping[str, Any]], name: str) -> dict[str, Any] | None:
    """How the wait ``name`` was last closed, from a ledger (for a wait whose set is over):
    ``{state, by, at, answer_id}`` of the newest record that answered, expired or superseded it."""
    found = None
    for rec in records:
        eff = rec.get("effect") or {}
        kind = eff.get("type")
        if kind not in DELIVERY_TYPES:
            continue
        res = rec.get("result") or {}
        if (eff.get("payload") or {}).get("wait") == name and kind != "wait_reminder" and kind != "wait_escalated":
            state = "expired" if kind == "wait_expired" else "answered"
            found = {"state": state, "by": res.get("by"), "at": res.get("at"), "answer_id": res.get("answer_id")}
        elif name in (res.get("superseded") or ()):
            found = {"state": "superseded", "by": None, "at": res.get("at"), "answer_id": None}
    return found


def target_of(run: RunState, action: str, wait_key: str | None) -> str:
    """The wait of ``run``'s set that a ``respond`` or a ``resume``/``emit`` (by ``wait_key``)
    delivers to. :class:`AmbiguousWait` when ``respond`` (or a keyless resume) finds several open;
    :class:`UnknownWait` when nothing open fits."""
    w = run.waiting
    names = open_names(w)
    if wait_key is not None:
        name = name_for_key(w, wait_key)
        if name is None:
            raise UnknownWait(run.run_id, f"key:{wait_key}", [f"{n} (key {wait_named(w, n)['wait_key']})"  # type: ignore[index]
                                                               for n in names])
        return name
    if action == "respond":
        names = [n for n in names if wait_named(w, n)["kind"] == "user"]  # type: ignore[index]
    if len(names) == 1:
        return names[0]
    if not names:
        raise UnknownWait(run.run_id, "(any question)", open_names(w))
    raise AmbiguousWait(run.run_id, names)
