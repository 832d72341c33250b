"""SLA rules: what a workflow promises about its runs, and what happens, once per run, when a run breaks it.

A rule is declared on the worker registry beside the workflow (the kernel's ``WorkflowSpec``
is not touched), and checked by the recovery sweep's stuck detector (``workers/stuck.py``)::

    from workers.registry import register_sla
    from workers.sla import SlaRule

    register_sla("refund", SlaRule("answer-in-time", max_waiting_s={"user": 3600},
                                   action="webhook", url="https://ops.example.com/hooks/sla"))

Limits, each in seconds, any of them (the first one passed breaks the rule):

* ``max_running_s``: a running run made no commit for this long (a node, an effect, or nothing
  moving it);
* ``max_waiting_s``: a run has waited this long, per wait reason (``{"user": 3600}``; a single
  number is every reason);
* ``max_total_s``: a run that has not ended is this old (from its creation).

Actions: ``event`` (an ``sla.breached`` event on the events stream, which every action also
adds), ``webhook`` (a POST of the alert as JSON, signed with HMAC-SHA256, ``workers/alerts.py``),
``cancel`` and ``fail`` (the operator paths, recorded in the run's ledger with the actor
``sla:<rule>``). A malformed rule is refused when it is made or registered:
:class:`InvalidSlaRule` names the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from runtime import RunState, RunStatus, WaitReason
from runtime.errors import WorkflowError

from .explain import Facts

__all__ = ["SlaRule", "InvalidSlaRule", "Breach", "breach_of", "ACTIONS", "WAIT_REASONS", "fail_run", "perform"]

#: What a rule may do when a run breaks it.
ACTIONS = ("event", "webhook", "cancel", "fail")
#: The wait reasons ``max_waiting_s`` may name.
WAIT_REASONS = tuple(r.value for r in WaitReason)
_FIELDS = ("name", "action", "max_running_s", "max_waiting_s", "max_total_s", "url")


class InvalidSlaRule(WorkflowError, ValueError):
    """Raised when an SLA rule is malformed; ``field`` names what is wrong (``max_waiting_s['usr']``)."""

    def __init__(self, field: str, problem: str, *, rule: str | None = None, workflow_id: str | None = None) -> None:
        self.field, self.problem, self.rule, self.workflow_id = field, problem, rule, workflow_id
        where = f"SLA rule {rule!r}" if rule else "SLA rule"
        if workflow_id:
            where += f" of workflow {workflow_id!r}"
        super().__init__(f"{where}: {field}: {problem}")


def _positive(value: Any, name: str, rule: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InvalidSlaRule(name, f"must be a finite number of seconds above 0, got {value!r}", rule=rule)
    return float(value)


def _seconds(value: Any, name: str, rule: str) -> float | None:
    return None if value is None else _positive(value, name, rule)


@dataclass(frozen=True)
class SlaRule:
    """One promise about the runs of a workflow, and the action taken once per run that breaks it."""

    #: Names the rule in alerts and in the ledger (actor ``sla:<name>``); unique per workflow.
    name: str
    #: ``event``, ``webhook``, ``cancel`` or ``fail``.
    action: str = "event"
    max_running_s: float | None = None
    #: Per wait reason (``event``, ``until``, ``user``, ``job``, ``subworkflow``); a number: every reason.
    max_waiting_s: Mapping[str, float] | float | None = None
    max_total_s: float | None = None
    #: Where a ``webhook`` rule posts its alert (http or https).
    url: str | None = None
    _waits: dict[str, float] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name.strip() or any(c.isspace() for c in name) or len(name) > 100:
            raise InvalidSlaRule("name", f"must be a non-empty text of at most 100 characters without spaces, "
                                 f"got {name!r}")
        if self.action not in ACTIONS:
            raise InvalidSlaRule("action", f"must be one of {', '.join(ACTIONS)}, got {self.action!r}", rule=name)
        _seconds(self.max_running_s, "max_running_s", name)
        _seconds(self.max_total_s, "max_total_s", name)
        waits: dict[str, float] = {}
        w = self.max_waiting_s
        if isinstance(w, Mapping):
            for reason, value in w.items():
                if reason not in WAIT_REASONS:
                    raise InvalidSlaRule(f"max_waiting_s[{reason!r}]", "unknown wait reason; one of "
                                         + ", ".join(WAIT_REASONS), rule=name)
                waits[reason] = _positive(value, f"max_waiting_s[{reason!r}]", name)
        elif w is not None:
            waits = dict.fromkeys(WAIT_REASONS, _positive(w, "max_waiting_s", name))
        object.__setattr__(self, "_waits", waits)
        if self.max_running_s is None and self.max_total_s is None and not waits:
            raise InvalidSlaRule("max_running_s", "a rule needs a limit: max_running_s, max_waiting_s or "
                                 "max_total_s", rule=name)
        if self.action == "webhook":
            parts = urlsplit(self.url) if isinstance(self.url, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
                raise InvalidSlaRule("url", f"a webhook rule needs an http(s) URL, got {self.url!r}", rule=name)
        elif self.url is not None:
            raise InvalidSlaRule("url", f"only a webhook rule has a URL (action is {self.action!r})", rule=name)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SlaRule:
        """A rule from plain data (a config file); an unknown key is refused, named."""
        if not isinstance(data, Mapping):
            raise InvalidSlaRule("rule", f"must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise InvalidSlaRule(str(unknown[0]), f"unknown field; known: {', '.join(_FIELDS)}",
                                 rule=str(data.get("name")) if data.get("name") else None)
        if "name" not in data:
            raise InvalidSlaRule("name", "missing")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "action": self.action, "max_running_s": self.max_running_s,
                "max_waiting_s": dict(self._waits) or None, "max_total_s": self.max_total_s, "url": self.url}

    def waiting_limit(self, reason: str | None) -> float | None:
        """The ``max_waiting_s`` of a wait reason, or None."""
        return self._waits.get(reason or "")

    @property
    def needs_created_at(self) -> bool:
        return self.max_total_s is not None

    def smallest_limit_s(self, source: str) -> float | None:
        """The rule's shortest limit that a run found in the index ``source`` (``running`` or a
        wait reason) can break, counted from its last commit; None when none."""
        return self.max_running_s if source == "running" else self._waits.get(source)


class Breach(NamedTuple):
    """When a run breaks (or will break) a rule, which limit, and since when its clock runs."""

    at_ms: int
    limit: str
    limit_s: float
    since_ms: int


def breach_of(rule: SlaRule, f: Facts, *, updated_ms: int, created_ms: int | None) -> Breach | None:
    """The first limit of ``rule`` that the run of ``f`` breaks, with when; None when no limit
    applies to the run as it is (ended, or waiting for a reason the rule leaves alone)."""
    found: list[Breach] = []
    if f.status in ("running", "waiting"):
        if rule.max_total_s is not None and created_ms is not None:
            found.append(Breach(created_ms + int(rule.max_total_s * 1000), "max_total_s", rule.max_total_s,
                                created_ms))
        if f.status == "running" and rule.max_running_s is not None:
            found.append(Breach(updated_ms + int(rule.max_running_s * 1000), "max_running_s", rule.max_running_s,
                                updated_ms))
        if f.status == "waiting":
            reason = (f.waiting or {}).get("reason")
            limit = rule.waiting_limit(reason)
            if limit is not None:
                found.append(Breach(updated_ms + int(limit * 1000), f"max_waiting_s[{reason}]", limit, updated_ms))
    return min(found) if found else None


# -- the actions that change the run ---------------------------------------------------------------


def fail_run(engine: Any, run_id: str, *, reason: str, actor: str) -> bool:
    """Fail a run that has not ended, as an operator would: one ``operator_fail`` record (who,
    why) in the hash chain; a parent waiting on it is told. False when it had ended already."""
    failed = False

    def change(run: RunState, v: int) -> Any:
        nonlocal failed
        if RunStatus(run.status).is_terminal:
            return None
        record = engine._operator_record(run, "operator_fail", reason, actor, {"failed": True})
        run.status = RunStatus.FAILED
        run.error = reason
        run.waiting = None
        run.updated_at = record.ended_at or run.updated_at
        failed = True
        return run, "none", [record]

    state = engine._retrying(run_id, change)
    if failed and state.parent_run_id:
        engine._notify_parent(state)
    return failed


def perform(engine: Any, alert: Mapping[str, Any]) -> str:
    """Do what a ``cancel``, ``fail`` or ``event`` alert asks (the event was added when the alert
    was decided); returns what was done. Raises when it could not be done (retried)."""
    from runtime.errors import RunNotFound

    action, run_id, rule = alert["action"], str(alert["run_id"]), str(alert["rule"])
    reason = f"SLA rule {rule!r}: {alert.get('limit')} of {alert.get('limit_s')} s passed"
    try:
        if action == "cancel":
            return "cancelled" if engine.cancel(run_id, reason=reason, actor=f"sla:{rule}") else "had ended"
        if action == "fail":
            return "failed" if fail_run(engine, run_id, reason=reason, actor=f"sla:{rule}") else "had ended"
    except RunNotFound:
        return "no such run"
    return "event sent"
