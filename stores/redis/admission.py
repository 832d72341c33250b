"""Flow-control admission (issue 14): one Lua call takes every rule's share of an admission, or nothing.

:class:`Admission` is the Python side of ``lua/admit*.lua``. The caller resolves which rules
apply to an admission (the run's key path plus the global rules, scoped; a pattern rule
expanded to the concrete key's rule id) and passes them as ``(rule id, rule)`` pairs; a rule is
anything with the fields of ``workers.flow.rules.LimitRule`` (imports point down: this module
does not import it). The state lives in the keys of :class:`~stores.redis.flowkeys.FlowKeys`:

* concurrency: a slot per holder, a ``slots`` ZSET member scored by its lease expiry. A slot
  whose lease expired stops counting at once; :meth:`Admission.reclaim_expired` (the sweep)
  removes it and counts it. A holder whose lease is live is admitted again without taking
  anything (a redelivered admission is harmless);
* rate: GCRA on the ``rate`` key (theoretical arrival time, µs): ``rate`` admissions per
  ``per_s`` seconds, ``burst`` more at once after a quiet spell;
* tokens and cost: a fixed window of ``window_s`` (aligned on the epoch); an admission reserves
  its estimate, :meth:`Admission.reconcile` corrects it by the real usage. A window's spend
  only goes over its budget through reconciled usage beyond the estimates. An estimate larger
  than the whole budget is refused at once (it could never be admitted).

Every holder is in ``FlowKeys.holders()`` (lease expiry) and ``FlowKeys.held(holder)`` (its rule
ids), so release and the sweep find what it holds without a scan. The time is the Redis
clock (``TIME`` in the scripts); ``clock`` (ms) is for tests only.

Round trips: :meth:`~Admission.acquire` and :meth:`~Admission.reconcile` with a rule id are one;
:meth:`~Admission.release`, :meth:`~Admission.renew` and a reconcile of every rule read the held
set first (two); a sweep three.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from .flowkeys import FlowKeys
from .scripts import SOURCES, Reply

__all__ = ["Admission", "Decision", "Verdict", "RuleLike", "rule_argv"]

#: Attempts of a release whose holder was admitted again (by a duplicate) while it was released.
_RELEASE_ATTEMPTS = 5


class RuleLike(Protocol):
    """The fields of ``workers.flow.rules.LimitRule`` the admission reads."""

    @property
    def concurrency(self) -> int | None: ...
    @property
    def rate(self) -> float | None: ...
    @property
    def per_s(self) -> float: ...
    @property
    def burst(self) -> int: ...
    @property
    def tokens(self) -> int | None: ...
    @property
    def cost_usd(self) -> float | None: ...
    @property
    def window_s(self) -> float: ...
    @property
    def on_exhausted(self) -> str: ...


class Verdict(str, Enum):
    ADMITTED = "admitted"
    DEFERRED = "deferred"
    REFUSED = "refused"


@dataclass(frozen=True)
class Decision:
    """What one admission decided.

    ``rule_id`` and ``kind`` (``concurrency``, ``rate``, ``tokens``, ``cost_usd``) name the rule
    that deferred or refused; ``until_ms`` (deferred) is the earliest time, by the Redis clock,
    the rule can admit (concurrency: when enough leases expire, unless holders release
    before; rate: when the bucket has room; budget: the window's end); ``reason`` (refused):
    ``exhausted`` (the rule's policy is ``fail``) or ``oversize`` (the estimate is larger than the
    whole budget). ``again``: the holder's lease was live, nothing was taken. ``at_us``: the Redis
    time of the decision (µs).
    """

    verdict: Verdict
    rule_id: str | None = None
    kind: str | None = None
    until_ms: int | None = None
    reason: str | None = None
    again: bool = False
    at_us: int = 0

    @property
    def admitted(self) -> bool:
        return self.verdict is Verdict.ADMITTED


def _micro(usd: float) -> int:
    return int(round(usd * 1_000_000))


def rule_argv(rid: str, rule: RuleLike) -> list[str]:
    """The eight items ``admit.lua`` reads per rule (all integers: the script and the model agree)."""
    emit = tau = ""
    if rule.rate is not None:
        interval = max(1, int(round(rule.per_s * 1_000_000 / rule.rate)))
        emit, tau = str(interval), str(rule.burst * interval)
    budget = rule.tokens is not None or rule.cost_usd is not None
    return [rid, "1" if rule.on_exhausted == "fail" else "0",
            "" if rule.concurrency is None else str(rule.concurrency), emit, tau,
            "" if rule.tokens is None else str(rule.tokens),
            "" if rule.cost_usd is None else str(_micro(rule.cost_usd)),
            str(max(1, int(round(rule.window_s * 1000)))) if budget else ""]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Admission:
    """Admissions, releases, renewals, reconciliations and the sweep of one deployment's flow control."""

    def __init__(self, client: Any, keys: FlowKeys, *, clock: Callable[[], int] | None = None) -> None:
        self.client: Any = client
        self.keys = keys
        #: Tests only: the time in epoch ms the scripts use instead of the Redis clock (no key expires then).
        self.clock = clock
        self._admit = client.register_script(SOURCES["admit"])
        self._release = client.register_script(SOURCES["admit_release"])
        self._renew = client.register_script(SOURCES["admit_renew"])
        self._reconcile = client.register_script(SOURCES["admit_reconcile"])

    def _now_arg(self) -> str:
        return "" if self.clock is None else str(int(self.clock()))

    def _now_ms(self) -> int:
        if self.clock is not None:
            return int(self.clock())
        seconds, micros = self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    # -- admission --------------------------------------------------------------------------

    def acquire(self, holder: str, rules: Sequence[tuple[str, RuleLike]], *, tokens: int = 0,
                cost_usd: float = 0.0, lease_ms: int) -> Decision:
        """Take a share of every rule for ``holder`` (``run/step/attempt``), or nothing; one round trip.

        ``tokens`` / ``cost_usd``: the estimate reserved on every token / cost rule.
        """
        if lease_ms <= 0 or tokens < 0 or cost_usd < 0:
            raise ValueError("lease_ms must be above 0, tokens and cost_usd 0 or more")
        keys = [self.keys.holders(), self.keys.held(holder)]
        argv: list[str] = [holder, str(int(lease_ms)), str(int(tokens)), str(_micro(cost_usd)), self._now_arg()]
        for rid, rule in rules:
            keys += [self.keys.slots(rid), self.keys.rate(rid), self.keys.budget(rid)]
            argv += rule_argv(rid, rule)
        reply = self._admit(keys=keys, args=argv)
        code = Reply(int(reply[0]))
        if code is Reply.ADMITTED:
            return Decision(Verdict.ADMITTED, again=bool(int(reply[1])), at_us=int(reply[2]))
        rid = rules[int(reply[1]) - 1][0]
        kind = _text(reply[2])
        if code is Reply.DEFERRED:
            return Decision(Verdict.DEFERRED, rid, kind, until_ms=int(reply[3]), at_us=int(reply[4]))
        return Decision(Verdict.REFUSED, rid, kind, reason=_text(reply[3]), at_us=int(reply[4]))

    # -- giving back ------------------------------------------------------------------------

    def _held(self, holders: Iterable[str]) -> list[tuple[str, list[str]]]:
        holders = list(holders)
        pipe = self.client.pipeline(transaction=False)
        for holder in holders:
            pipe.smembers(self.keys.held(holder))
        return [(h, sorted(_text(r) for r in rids)) for h, rids in zip(holders, pipe.execute())]

    def _give_back(self, mode: str, held: list[tuple[str, list[str]]]) -> list[int]:
        keys, argv = [self.keys.holders()], [mode, self._now_arg()]
        for holder, rids in held:
            keys.append(self.keys.held(holder))
            argv += [holder, str(len(rids)), *rids]
            for rid in rids:
                keys += [self.keys.slots(rid), self.keys.budget(rid)]
        return [int(x) for x in self._release(keys=keys, args=argv)]

    def release(self, holder: str) -> int:
        """Free everything ``holder`` holds (after its result's commit); the slots freed (0 if none).

        An open budget reservation stays spent as reserved (reconcile it before).
        """
        return self.release_timed(holder)[0]

    def release_timed(self, holder: str) -> tuple[int, int]:
        """:meth:`release`, and the Redis time (µs) at which the slots were freed."""
        freed = at_us = 0
        for _ in range(_RELEASE_ATTEMPTS):
            _ok, slots, _done, left, at_us = self._give_back("release", self._held([holder]))
            freed += slots
            if not left:
                break
        return freed, at_us

    def reclaim_expired(self, limit: int = 100) -> int:
        """The sweep: up to ``limit`` holders whose lease expired lose what they hold; the slots
        reclaimed (``slots_reclaimed``). Their budget reservations stay spent as reserved."""
        expired = [_text(h) for h in self.client.zrangebyscore(self.keys.holders(), "-inf", self._now_ms(),
                                                                start=0, num=limit)]
        if not expired:
            return 0
        return self._give_back("reclaim", self._held(expired))[1]

    def renew(self, holder: str, lease_ms: int) -> bool:
        """Extend the lease of a live holder to now + ``lease_ms``; False when it expired or was
        released (its slots may be someone else's now: admit it again)."""
        rids = self._held([holder])[0][1]
        keys = [self.keys.holders(), *(self.keys.slots(rid) for rid in rids)]
        reply = self._renew(keys=keys, args=[holder, str(int(lease_ms)), self._now_arg()])
        return Reply(int(reply[0])) is Reply.OK

    def reconcile(self, holder: str, rid: str | None = None, actual_tokens: int = 0,
                  actual_cost_usd: float = 0.0) -> int:
        """Settle ``holder``'s reservation on rule ``rid`` (None: on every rule it holds) with the real
        usage: refund or charge the difference. Returns the reservations settled (0: none open)."""
        rids = [rid] if rid is not None else self._held([holder])[0][1]
        if not rids:
            return 0
        keys = [self.keys.budget(r) for r in rids]
        reply = self._reconcile(keys=keys, args=[holder, str(int(actual_tokens)), str(_micro(actual_cost_usd)),
                                                 self._now_arg()])
        return int(reply[1])

    # -- looking ----------------------------------------------------------------------------

    def usage(self, rid: str, rule: RuleLike) -> dict[str, Any]:
        """The state of one rule on one concrete key, for ``limits usage``: live holders and their
        lease expiry, the rate bucket, the budget window's spend. Times: epoch ms, Redis clock."""
        now = self._now_ms()
        pipe = self.client.pipeline(transaction=False)
        pipe.zrange(self.keys.slots(rid), 0, -1, withscores=True)
        pipe.get(self.keys.rate(rid))
        pipe.hgetall(self.keys.budget(rid))
        members, tat_raw, budget_raw = pipe.execute()
        budget = {_text(k): _text(v) for k, v in budget_raw.items()}
        return usage_of(rule, now, [(_text(m), int(s)) for m, s in members],
                        None if tat_raw is None else int(float(_text(tat_raw))), budget)


def usage_of(rule: RuleLike, now: int, members: list[tuple[str, int]], tat: int | None,
             budget: dict[str, str]) -> dict[str, Any]:
    """The usage report from a rule's raw state (shared by :class:`Admission` and the test model)."""
    out: dict[str, Any] = {"now_ms": now}
    if rule.concurrency is not None:
        live = sorted((score, m) for m, score in members if score > now)
        out["concurrency"] = {"limit": rule.concurrency, "holders": [{"holder": m, "expires_ms": s} for s, m in live],
                              "expired": len(members) - len(live)}
    if rule.rate is not None:
        emit = int(rule_argv("", rule)[3])
        tau = rule.burst * emit
        level = max(tat or 0, now * 1000) - now * 1000
        room = 0 if level > tau else (tau - level) // emit + 1
        out["rate"] = {"rate": rule.rate, "per_s": rule.per_s, "burst": rule.burst, "available": room,
                       "next_free_ms": now if room else math.ceil((level - tau) / 1000) + now}
    if rule.tokens is not None or rule.cost_usd is not None:
        win = int(rule_argv("", rule)[7])
        start = now - now % win
        current = budget.get("w") == str(start)
        spent_t = int(budget.get("t", 0)) if current else 0
        spent_c = int(budget.get("c", 0)) if current else 0
        out["budget"] = {"window_start_ms": start, "resets_ms": start + win,
                         "open_reservations": sum(1 for f in budget if f.startswith("r:"))}
        if rule.tokens is not None:
            out["budget"].update(tokens_spent=spent_t, tokens_limit=rule.tokens)
        if rule.cost_usd is not None:
            out["budget"].update(cost_usd_spent=spent_c / 1_000_000, cost_usd_limit=rule.cost_usd)
    return out
