"""Flow-control rules: what may run at once, how fast, and how many LLM tokens and dollars it may spend.

A rule is attached to a *key*: ``global``, or a level and a name, ``tenant:acme``,
``user:u-7``, ``agent:support`` (the agent defaults to the run's workflow id). A run carries
its keys from its start (:class:`AdmissionKeys`), forming the path ``tenant -> user ->
agent``; every rule of every key on the path, plus the ``global`` ones, is checked at each
admission, at once (``docs/flow-control.md``). A key pattern ``tenant:*`` gives every tenant
its *own* copy of the rule (each tenant counted apart); an exact key overrides the pattern.

A rule may be scoped: ``*`` (every admission: run starts and effects), ``run`` (run starts
only), an effect type (``llm_call``, ``tool_calls``, ``start_subworkflow``), a model
(``model:gpt-4o``) or a tool (``tool:search``).

Limits, any of them (the others None):

* ``concurrency``: holders at once (a holder is a run start or an effect attempt, until its
  result commits; waiting runs hold nothing);
* ``rate`` / ``per_s`` / ``burst``: admissions per ``per_s`` seconds (GCRA; ``burst`` extra
  at once after a quiet spell);
* ``tokens`` / ``window_s``: LLM tokens per window (a reservation of the estimate at
  admission, reconciled with the response's ``usage`` when the result commits);
* ``cost_usd`` / ``window_s``: dollars per window, by the price table.

``on_exhausted``: ``wait`` (deferred: the run waits, its wait naming the rule, until the rule
admits it) or ``fail`` (:class:`BudgetExceeded`). ``weight`` is the key's share in fair dispatch.

Everything is checked here when a rule is made: :class:`InvalidLimitRule` names the field.
Rules cross the wire as JSON (:meth:`LimitRule.to_dict` / :meth:`LimitRule.from_dict`).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from runtime.errors import AbstractRuntimeError

__all__ = ["LimitRule", "AdmissionKeys", "InvalidLimitRule", "BudgetExceeded", "LEVELS", "SCOPES_FIXED",
           "FLOW_VARS", "parse_key", "rule_applies"]

#: Where a run keeps its admission keys: ``vars["_flow"]`` (``{"tenant", "user", "agent"}``).
FLOW_VARS = "_flow"

#: The levels of a key path, outermost first (``global`` has no name).
LEVELS = ("global", "tenant", "user", "agent")
#: Scopes that are not a model or a tool.
SCOPES_FIXED = ("*", "run", "llm_call", "tool_calls", "start_subworkflow")
#: A key's name: letters, digits and ``_ - . @ /``, 1 to 100 characters (``*`` alone: a pattern).
_NAME = re.compile(r"^(?:\*|[A-Za-z0-9_.@/-]{1,100})$")
_SCOPED_NAME = re.compile(r"^(model|tool):[A-Za-z0-9_.:@/-]{1,100}$")
_RULE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class InvalidLimitRule(AbstractRuntimeError, ValueError):
    """Raised when a flow-control key or rule is malformed; ``field`` names what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        self.field, self.problem = field, problem
        super().__init__(f"flow-control rule: {field}: {problem}")


class BudgetExceeded(AbstractRuntimeError):
    """Raised (and recorded as the effect's failure) when a rule with ``on_exhausted="fail"``
    refuses an admission, or when a reservation is larger than a whole budget window."""

    def __init__(self, rule: str, reason: str) -> None:
        self.rule, self.reason = rule, reason
        super().__init__(f"refused by flow-control rule `{rule}`: {reason}")


def parse_key(key: str) -> tuple[str, str]:
    """``("tenant", "acme")`` for ``tenant:acme``, ``("global", "")`` for ``global``;
    :class:`InvalidLimitRule` for anything else."""
    if not isinstance(key, str):
        raise InvalidLimitRule("key", f"must be a text, got {type(key).__name__}")
    if key == "global":
        return "global", ""
    level, sep, name = key.partition(":")
    if not sep or level not in LEVELS[1:]:
        raise InvalidLimitRule("key", f"{key!r} is not `global` or LEVEL:NAME with LEVEL one of "
                               + ", ".join(LEVELS[1:]))
    if not _NAME.match(name):
        raise InvalidLimitRule("key", f"{key!r}: the name must be `*` or 1 to 100 of letters, digits and _ - . @ /")
    return level, name


def _positive(name: str, value: Any, *, whole: bool = False, zero: bool = False) -> Any:
    if value is None:
        return None
    ok_type = isinstance(value, int) if whole else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        kind = "a whole number" if whole else "a number"
        raise InvalidLimitRule(name, f"must be {kind} {'of 0 or more' if zero else 'above 0'}, got {value!r}")
    return value


@dataclass(frozen=True)
class LimitRule:
    """One rule on one key (see the module docstring)."""

    key: str
    #: Names the rule in explanations, events and ``limits show`` (unique per key and scope).
    name: str = "limit"
    scope: str = "*"
    concurrency: int | None = None
    rate: float | None = None
    per_s: float = 1.0
    burst: int = 0
    tokens: int | None = None
    cost_usd: float | None = None
    window_s: float = 60.0
    weight: int = 1
    on_exhausted: str = "wait"

    def __post_init__(self) -> None:
        parse_key(self.key)
        if not isinstance(self.name, str) or not _RULE_NAME.match(self.name):
            raise InvalidLimitRule("name", f"must be 1 to 64 of letters, digits and _ . -, got {self.name!r}")
        if not isinstance(self.scope, str) or not (self.scope in SCOPES_FIXED or _SCOPED_NAME.match(self.scope)):
            raise InvalidLimitRule("scope", f"{self.scope!r} is not one of {', '.join(SCOPES_FIXED)}, "
                                   "model:NAME or tool:NAME")
        _positive("concurrency", self.concurrency, whole=True)
        _positive("rate", self.rate)
        _positive("per_s", self.per_s)
        _positive("burst", self.burst, whole=True, zero=True)
        _positive("tokens", self.tokens, whole=True)
        _positive("cost_usd", self.cost_usd)
        _positive("window_s", self.window_s)
        _positive("weight", self.weight, whole=True)
        if self.on_exhausted not in ("wait", "fail"):
            raise InvalidLimitRule("on_exhausted", f"must be `wait` or `fail`, got {self.on_exhausted!r}")
        if all(v is None for v in (self.concurrency, self.rate, self.tokens, self.cost_usd)):
            raise InvalidLimitRule("concurrency", "a rule needs a limit: concurrency, rate, tokens or cost_usd")
        if self.rate is None and self.burst:
            raise InvalidLimitRule("burst", "a burst needs a rate")
        if (self.tokens is not None or self.cost_usd is not None) and self.scope not in ("*", "llm_call") \
                and not self.scope.startswith("model:"):
            raise InvalidLimitRule("scope", f"tokens and cost_usd count LLM calls: scope must be *, llm_call or "
                                   f"model:NAME, got {self.scope!r}")

    @property
    def level(self) -> str:
        return parse_key(self.key)[0]

    @property
    def is_pattern(self) -> bool:
        return self.key.endswith(":*")

    @property
    def label(self) -> str:
        """How explanations name it: ``tenant:acme concurrency`` (``tenant:acme/llm_call rate``...)."""
        scope = "" if self.scope == "*" else f"/{self.scope}"
        kinds = [k for k in ("concurrency", "rate", "tokens", "cost_usd") if getattr(self, k) is not None]
        return f"{self.key}{scope} {self.name if self.name != 'limit' else ' '.join(kinds)}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> LimitRule:
        """A rule from its JSON form; unknown fields are refused (naming them)."""
        if not isinstance(data, dict):
            raise InvalidLimitRule("rule", f"must be a JSON object, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidLimitRule(unknown[0], f"unknown field (known: {', '.join(sorted(known))})")
        if "key" not in data:
            raise InvalidLimitRule("key", "missing")
        return cls(**data)


@dataclass(frozen=True)
class AdmissionKeys:
    """The keys a run is admitted under, set at its start (``Client.start(..., tenant=, user=, agent=)``)."""

    tenant: str | None = None
    user: str | None = None
    #: Defaults to the run's workflow id.
    agent: str | None = None
    #: Where the run's deferred work stands in its key's fair-dispatch queue: 1 first, 5 last
    #: (None: 3).
    priority: int | None = None

    def __post_init__(self) -> None:
        for level in ("tenant", "user", "agent"):
            value = getattr(self, level)
            if value is not None and (not isinstance(value, str) or value == "*" or not _NAME.match(value)):
                raise InvalidLimitRule(level, f"{value!r} is not 1 to 100 of letters, digits and _ - . @ /")
        p = self.priority
        if p is not None and (isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 5):
            raise InvalidLimitRule("priority", f"must be a whole number from 1 (first) to 5 (last), got {p!r}")

    def path(self, workflow_id: str) -> list[str]:
        """The keys checked, outermost first: ``["global", "tenant:acme", "user:u-7", "agent:support"]``."""
        out = ["global"]
        if self.tenant:
            out.append(f"tenant:{self.tenant}")
        if self.user:
            out.append(f"user:{self.user}")
        out.append(f"agent:{self.agent or workflow_id}")
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in (("tenant", self.tenant), ("user", self.user),
                                                 ("agent", self.agent)) if v}
        if self.priority is not None:
            out["priority"] = self.priority
        return out

    @classmethod
    def from_dict(cls, data: Any) -> AdmissionKeys:
        if not isinstance(data, dict):
            return cls()
        p = data.get("priority")  # stored: a bad value is the default, not an error in a worker
        return cls(tenant=data.get("tenant"), user=data.get("user"), agent=data.get("agent"),
                   priority=p if isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 5 else None)


def rule_applies(rule: LimitRule, *, kind: str, model: str | None = None, tools: tuple[str, ...] = ()) -> bool:
    """Does ``rule`` count an admission of ``kind`` (``run`` or an effect type's value)?"""
    scope = rule.scope
    if scope == "*":
        return True
    if scope.startswith("model:"):
        return kind == "llm_call" and model == scope[len("model:"):]
    if scope.startswith("tool:"):
        return kind == "tool_calls" and scope[len("tool:"):] in tools
    return scope == kind
