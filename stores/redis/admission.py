"""Flow-control admission (issue 14): one Lua call takes every rule's share of an admission, or nothing.

:class:`Admission` is the Python side of ``lua/admit*.lua``. The caller resolves which rules
apply to an admission (the run's key path plus the global rules, scoped; a pattern rule
expanded to the concrete key's rule id) and passes them as ``(rule id, rule)`` pairs; a rule is
anything with the fields of ``workers.flow.rules.LimitRule`` (imports point down: this module
does not import it). The state lives in the keys of :class:`~stores.redis.flowkeys.FlowKeys`:

* concurrency: a slot per holder, a ``slots`` ZSET member scored by its lease expiry. A slot
  whose lease expired stops counting at once; :meth:`Admission.reclaim_expired` (the sweep)
  removes it and counts it. A holder whose lease is live is admitted again without taking
  anything, its lease renewed (a redelivered admission is harmless, and the task of an attempt
  admitted before its message was sent finds its share there);
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
:meth:`~Admission.release` given the holder's rules is one too; :meth:`~Admission.renew`, a
reconcile of every rule and a release without its rules read the held set first (two); a sweep three.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from .flowkeys import FlowKeys
from .scripts import SOURCES, Reply

__all__ = ["Admission", "Decision", "Verdict", "RuleLike", "emission_us", "rule_argv", "rule_keys", "window_ms"]

#: Attempts of a release whose holder was admitted again (by a duplicate) while it was released.
_RELEASE_ATTEMPTS = 5
#: Rules whose KEYS and ARGV an ``Admission`` keeps ready (a registry holds far fewer); past it, it starts over.
_ENCODED_MAX = 4096


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


#: The mask bits ``admit.lua`` reads per rule: the limits a rule has, and its policy.
_CONCURRENCY, _RATE, _TOKENS, _COST, _FAIL = 1, 2, 4, 8, 16


def emission_us(rule: RuleLike) -> int:
    """The GCRA emission interval of a rate rule (µs between two admissions at the steady rate)."""
    assert rule.rate is not None
    return max(1, int(round(rule.per_s * 1_000_000 / rule.rate)))


def window_ms(rule: RuleLike) -> int:
    """The budget window of a token or cost rule (ms)."""
    return max(1, int(round(rule.window_s * 1000)))


def rule_argv(rid: str, rule: RuleLike) -> list[str]:
    """What ``admit.lua`` reads per rule: its id, its mask, then only the numbers of the limits it
    has (all integers: the script and the model agree)."""
    mask = _FAIL if rule.on_exhausted == "fail" else 0
    out = [rid, ""]
    if rule.concurrency is not None:
        mask |= _CONCURRENCY
        out.append(str(rule.concurrency))
    if rule.rate is not None:
        mask |= _RATE
        emit = emission_us(rule)
        out += [str(emit), str(rule.burst * emit)]
    if rule.tokens is not None:
        mask |= _TOKENS
        out.append(str(rule.tokens))
    if rule.cost_usd is not None:
        mask |= _COST
        out.append(str(_micro(rule.cost_usd)))
    if rule.tokens is not None or rule.cost_usd is not None:
        out.append(str(window_ms(rule)))
    out[1] = str(mask)
    return out


def rule_keys(keys: FlowKeys, rid: str, rule: RuleLike) -> list[str]:
    """The keys ``admit.lua`` reads per rule, in its order: slots, rate, budget, each only when
    the rule has that limit."""
    out = []
    if rule.concurrency is not None:
        out.append(keys.slots(rid))
    if rule.rate is not None:
        out.append(keys.rate(rid))
    if rule.tokens is not None or rule.cost_usd is not None:
        out.append(keys.budget(rid))
    return out


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
        self._encoded: dict[tuple[str, Any], tuple[list[str], list[str]]] = {}

    def _encode(self, rid: str, rule: RuleLike) -> tuple[list[str], list[str]]:
        """The rule's KEYS and ARGV for ``admit.lua``, made once per (rule id, rule) (rules are frozen)."""
        try:
            return self._encoded[(rid, rule)]
        except KeyError:
            pass
        except TypeError:  # an unhashable rule-like: made each time
            return rule_keys(self.keys, rid, rule), rule_argv(rid, rule)
        if len(self._encoded) >= _ENCODED_MAX:
            self._encoded.clear()
        out = self._encoded[(rid, rule)] = (rule_keys(self.keys, rid, rule), rule_argv(rid, rule))
        return out

    def _now_arg(self) -> str:
        return "" if self.clock is None else str(int(self.clock()))

    def _now_ms(self) -> int:
        if self.clock is not None:
            return int(self.clock())
        seconds, micros = self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    # -- admission --------------------------------------------------------------------------

    def acquire(self, holder: str, rules: Sequence[tuple[str, RuleLike]], *, tokens: int = 0,
                cost_usd: float = 0.0, lease_ms: int, behind: str | None = None) -> Decision:
        """Take a share of every rule for ``holder`` (``run/step/attempt``), or nothing; one round trip.

        ``tokens`` / ``cost_usd``: the estimate reserved on every token / cost rule. ``behind``: a
        fair-dispatch queue (ZSET) the holder must not overtake: while it holds anything, a new
        holder is deferred (kind ``queue``, no rule checked; a live holder is admitted again).
        """
        if lease_ms <= 0 or tokens < 0 or cost_usd < 0:
            raise ValueError("lease_ms must be above 0, tokens and cost_usd 0 or more")
        keys = [self.keys.holders(), self.keys.held(holder), behind or self.keys.unqueued(), self.keys.retaken()]
        argv: list[str] = [holder, str(int(lease_ms)), str(int(tokens)), str(_micro(cost_usd)), self._now_arg()]
        for rid, rule in rules:
            rkeys, rargv = self._encode(rid, rule)
            keys += rkeys
            argv += rargv
        reply = self._admit(keys=keys, args=argv)
        code = Reply(int(reply[0]))
        if code is Reply.ADMITTED:
            return Decision(Verdict.ADMITTED, again=bool(int(reply[1])), at_us=int(reply[2]))
        if int(reply[1]) == 0:  # behind queued work: no rule was checked
            return Decision(Verdict.DEFERRED, None, _text(reply[2]), at_us=int(reply[4]))
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

    def _give_back(self, mode: str, held: list[tuple[str, list[str]]], peek: str | None = None) -> list[int]:
        """The release script's reply: OK, slots, holders done, left over, now µs, and the size of
        the ZSET ``peek`` (0 without one)."""
        keys, argv = [self.keys.holders(), peek or self.keys.unqueued()], [mode, self._now_arg()]
        for holder, rids in held:
            keys.append(self.keys.held(holder))
            argv += [holder, str(len(rids)), *rids]
            for rid in rids:
                keys += [self.keys.slots(rid), self.keys.budget(rid)]
        return [int(x) for x in self._release(keys=keys, args=argv)]

    def release(self, holder: str, rules: Sequence[tuple[str, RuleLike]] | None = None) -> int:
        """Free everything ``holder`` holds (after its result's commit); the slots freed (0 if none).

        ``rules``: the rules it was admitted under, when the caller knows them (the gate does):
        one round trip instead of two (its held set is read only if it holds more than those).
        An open budget reservation stays spent as reserved (reconcile it before).
        """
        return self.release_timed(holder, rules)[0]

    def release_timed(self, holder: str, rules: Sequence[tuple[str, RuleLike]] | None = None) -> tuple[int, int]:
        """:meth:`release`, and the Redis time (µs) at which the slots were freed."""
        freed, at_us, _size = self.release_peek(holder, rules)
        return freed, at_us

    def release_peek(self, holder: str, rules: Sequence[tuple[str, RuleLike]] | None = None,
                     peek: str | None = None) -> tuple[int, int, int]:
        """:meth:`release_timed`, and the size of the ZSET ``peek`` read in the same round trip
        (the fair-dispatch ready set: is anything waiting for what was given back?)."""
        freed = at_us = size = 0
        held = None
        if rules is not None:  # what admit.lua puts in the held set: rules with a slot or a budget
            held = [(holder, sorted({rid for rid, r in rules if r.concurrency is not None or r.tokens is not None
                                     or r.cost_usd is not None}))]
        for _ in range(_RELEASE_ATTEMPTS):
            _ok, slots, _done, left, at_us, size = self._give_back("release", held or self._held([holder]), peek)
            held = None
            freed += slots
            if not left:
                break
        return freed, at_us, size

    def reclaim_expired(self, limit: int = 100) -> int:
        """The sweep: up to ``limit`` holders whose lease expired lose what they hold; the slots
        reclaimed (``slots_reclaimed``), with those an admission took again since the last sweep
        from a holder whose lease had expired (it was admitted afresh under the same id). Their
        budget reservations stay spent as reserved."""
        pipe = self.client.pipeline(transaction=True)
        pipe.get(self.keys.retaken())
        pipe.delete(self.keys.retaken())
        retaken = int(pipe.execute()[0] or 0)
        expired = [_text(h) for h in self.client.zrangebyscore(self.keys.holders(), "-inf", self._now_ms(),
                                                                start=0, num=limit)]
        if not expired:
            return retaken
        return retaken + self._give_back("reclaim", self._held(expired))[1]

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
        emit = emission_us(rule)
        tau = rule.burst * emit
        level = max(tat or 0, now * 1000) - now * 1000
        room = 0 if level > tau else (tau - level) // emit + 1
        out["rate"] = {"rate": rule.rate, "per_s": rule.per_s, "burst": rule.burst, "available": room,
                       "next_free_ms": now if room else math.ceil((level - tau) / 1000) + now}
    if rule.tokens is not None or rule.cost_usd is not None:
        win = window_ms(rule)
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
