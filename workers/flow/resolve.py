"""Which rules count one admission: the registry's rules, matched to a run's key path.

For a run whose path is ``global -> tenant:acme -> user:u-7 -> agent:support``
(:meth:`~workers.flow.rules.AdmissionKeys.path`), the rules that apply are, key by key,
outermost first:

* the rules stored under the key itself (``global``, ``tenant:acme``...);
* the rules of the key's pattern (``tenant:*``), each as the key's *own* copy: its concrete
  rule id is the key's (``tenant:acme|*|limit``), so every tenant is counted apart;
* an exact rule overrides the pattern's rule of the same scope and name on that key (the
  others of the pattern still apply).

A key with no rule of its own (an unknown tenant, say) gets its level's pattern rules: the
pattern is the *default rule* of its level; with no pattern either, only the ``global``
rules (and the rules of the other keys on the path) apply. Last, a rule counts the admission
only if its scope matches it (:func:`~workers.flow.rules.rule_applies`: ``run`` or an effect
type, a model, a tool).

The registry is read from Redis at most once per ``flow_rules_cache_s`` per process
(:class:`Resolver`): a rule edited with ``abstractruntime limits set`` takes effect within
that time on every worker.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from stores.redis.flowkeys import FlowKeys, rule_id
from stores.redis.limits import RedisLimits

from .rules import LimitRule, parse_key, rule_applies

__all__ = ["Applicable", "applicable", "rules_for_key", "registry", "Resolver", "resolver_for"]

#: ``(concrete rule id, rule)``: a pattern's rule is given with the concrete key (``tenant:acme``),
#: so that its label and its state keys name the key it counts.
Applicable = tuple[str, LimitRule]


def registry(backend: Any) -> RedisLimits[LimitRule]:
    """The limits registry and price table of a ``RedisBackend``'s deployment (its prefix)."""
    return RedisLimits(backend.client, FlowKeys(backend.keys.prefix), LimitRule.from_dict)


def rules_for_key(rules: Iterable[LimitRule], key: str) -> list[Applicable]:
    """Every rule that a concrete ``key`` carries, whatever it is scoped to: its own, then its
    pattern's not overridden (a pattern key, ``tenant:*``, gets its own rules only)."""
    level, name = parse_key(key)
    pattern = f"{level}:*"
    own: list[Applicable] = []
    inherited: list[Applicable] = []
    for rule in rules:
        if rule.key == key:
            own.append((rule_id(key, rule.scope, rule.name), rule))
        elif rule.key == pattern and name != "*" and level != "global":
            inherited.append((rule_id(key, rule.scope, rule.name), replace(rule, key=key)))
    taken = {rid for rid, _ in own}
    found = own + [(rid, rule) for rid, rule in inherited if rid not in taken]
    return sorted(found, key=lambda item: item[0])


def applicable(rules: Iterable[LimitRule], path: Sequence[str], kind: str, *, model: str | None = None,
               tools: Sequence[str] = ()) -> list[Applicable]:
    """The ``(concrete rule id, rule)`` that count one admission of ``kind`` (``run`` or an effect
    type's value: ``llm_call``, ``tool_calls``...) on ``path``, outermost key first.

    ``model`` is the LLM call's model, ``tools`` the names of the tool calls' tools. ``path``
    normally comes from ``AdmissionKeys.path(workflow_id)``; ``global`` is checked whether or not
    it is on it.
    """
    rules = list(rules)
    keys = list(path) if "global" in path else ["global", *path]
    out: list[Applicable] = []
    seen: set[str] = set()
    for key in keys:
        for rid, rule in rules_for_key(rules, key):
            if rid not in seen and rule_applies(rule, kind=kind, model=model, tools=tuple(tools)):
                seen.add(rid)
                out.append((rid, rule))
    return out


class Resolver:
    """:func:`applicable` on the registry, read at most once per ``cache_s`` (0: every time).

    One per process and deployment (:func:`resolver_for`); thread-safe. ``clock`` is for tests.
    """

    def __init__(self, read: Callable[[], list[LimitRule]], cache_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self.cache_s = cache_s
        self._clock = clock
        self._lock = threading.Lock()
        self._rules: list[LimitRule] = []
        self._read_at: float | None = None
        #: :meth:`applicable`'s answers for the rules as last read (a run's path and an effect's
        #: kind repeat: each admission would otherwise match every rule again).
        self._answers: dict[tuple[Any, ...], list[Applicable]] = {}

    def rules(self) -> list[LimitRule]:
        """The registry's rules, as read at most ``cache_s`` ago."""
        with self._lock:
            now = self._clock()
            if self._read_at is None or self.cache_s <= 0 or now - self._read_at >= self.cache_s:
                rules = self._read()
                if rules != self._rules:
                    self._answers = {}
                self._rules = rules
                self._read_at = now
            return self._rules

    def invalidate(self) -> None:
        """Read the registry again at the next call (after this process edited it)."""
        with self._lock:
            self._read_at = None

    def applicable(self, path: Sequence[str], kind: str, *, model: str | None = None,
                   tools: Sequence[str] = ()) -> list[Applicable]:
        """:func:`applicable` on the cached rules (the answer kept while they stay the same)."""
        rules = self.rules()
        key = (tuple(path), kind, model, tuple(tools))
        found = self._answers.get(key)
        if found is None:
            found = applicable(rules, path, kind, model=model, tools=tools)
            if len(self._answers) >= _ANSWERS_MAX:
                self._answers = {}
            self._answers[key] = found
        return list(found)


#: Answers a :class:`Resolver` keeps at most (paths x kinds in use); past it, it starts over.
_ANSWERS_MAX = 10_000

_RESOLVERS: weakref.WeakKeyDictionary[Any, Resolver] = weakref.WeakKeyDictionary()
_RESOLVERS_LOCK = threading.Lock()


def resolver_for(backend: Any, cache_s: float) -> Resolver:
    """This process's :class:`Resolver` of a ``RedisBackend`` (made on first use; ``cache_s`` is
    ``WorkerSettings.flow_rules_cache_s``)."""
    with _RESOLVERS_LOCK:
        found = _RESOLVERS.get(backend)
        if found is None or found.cache_s != cache_s:
            found = _RESOLVERS[backend] = Resolver(registry(backend).rules, cache_s)
        return found
