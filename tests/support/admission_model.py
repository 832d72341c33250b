"""A pure-Python model of flow-control admission (``stores/redis/lua/admit*.lua``), clock explicit.

The same semantics as the scripts, written plainly, so that a property test can drive both with
the same operations and compare every decision and every piece of state (``snapshot``). It
reads the rules' numbers as the scripts receive them (``emission_us``, ``window_ms``, micro-dollars):
integers only, so both sides compute exactly the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from stores.redis.admission import Decision, RuleLike, Verdict, emission_us, usage_of, window_ms


@dataclass
class Budget:
    w: int | None = None  # window start (ms)
    t: int = 0
    c: int = 0
    l: int | None = None  # noqa: E741 (the hash field's name)
    res: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # holder -> (tokens, micro, w); -1: not counted


@dataclass
class AdmissionModel:
    slots: dict[str, dict[str, int]] = field(default_factory=dict)  # rid -> holder -> expiry ms
    tat: dict[str, int] = field(default_factory=dict)  # rid -> µs
    budgets: dict[str, Budget] = field(default_factory=dict)
    holders: dict[str, int] = field(default_factory=dict)  # holder -> expiry ms
    held: dict[str, set[str]] = field(default_factory=dict)
    #: Slots taken again by a holder whose lease had expired, until the next reclaim counts them.
    retaken: int = 0

    # -- admission --------------------------------------------------------------------------

    def acquire(self, now: int, holder: str, rules: Sequence[tuple[str, RuleLike]], *, tokens: int = 0,
                cost_usd: float = 0.0, lease_ms: int, behind: int = 0) -> Decision:
        at = now * 1000
        want_c = int(round(cost_usd * 1_000_000))
        if self.holders.get(holder, -1) > now:  # a live holder: renewed when under a third of a lease is left
            if (self.holders[holder] - now) * 3 >= lease_ms:
                return Decision(Verdict.ADMITTED, again=True, at_us=at)
            expiry = now + lease_ms
            self.holders[holder] = expiry
            for rid, rule in rules:
                if rule.concurrency is not None and holder in self.slots.get(rid, {}):
                    self.slots[rid][holder] = expiry
            return Decision(Verdict.ADMITTED, again=True, at_us=at)
        if behind:  # ``behind``: items in the queue the holder must not overtake
            return Decision(Verdict.DEFERRED, None, "queue", at_us=at)
        refused: tuple[str, str, str] | None = None
        deferred: tuple[str, str, int] | None = None

        def block(rid: str, kind: str, fail: bool, until: int) -> None:
            nonlocal refused, deferred
            if fail:
                refused = refused or (rid, kind, "exhausted")
            elif deferred is None or until > deferred[2]:
                deferred = (rid, kind, until)

        plans: list[dict[str, Any]] = []
        for rid, rule in rules:
            fail = rule.on_exhausted == "fail"
            plan: dict[str, Any] = {}
            plans.append(plan)
            if rule.concurrency is not None:
                live = sorted(e for e in self.slots.get(rid, {}).values() if e > now)
                if len(live) >= rule.concurrency:
                    block(rid, "concurrency", fail, live[len(live) - rule.concurrency])
            if rule.rate is not None:
                emit = emission_us(rule)
                tau = rule.burst * emit
                tat = max(self.tat.get(rid, at), at)
                if tat - at > tau:
                    block(rid, "rate", fail, math.ceil((tat - tau) / 1000))
                else:
                    plan["tat"] = tat + emit
            if rule.tokens is not None or rule.cost_usd is not None:
                win = window_ms(rule)
                w = now - now % win
                b = self.budgets.get(rid, Budget())
                fresh = b.w != w
                spent_t, spent_c = (0, 0) if fresh else (b.t, b.c)
                plan.update(w=w, fresh=fresh, win=win)
                micro = None if rule.cost_usd is None else int(round(rule.cost_usd * 1_000_000))
                for limit, want, spent, kind in ((rule.tokens, tokens, spent_t, "tokens"),
                                                 (micro, want_c, spent_c, "cost_usd")):
                    if limit is None:
                        continue
                    if want > limit:
                        refused = refused or (rid, kind, "oversize")
                    elif spent >= limit or spent + want > limit:
                        block(rid, kind, fail, w + win)
        if refused:
            return Decision(Verdict.REFUSED, refused[0], refused[1], reason=refused[2], at_us=at)
        if deferred:
            return Decision(Verdict.DEFERRED, deferred[0], deferred[1], until_ms=deferred[2], at_us=at)
        expiry = now + lease_ms
        for (rid, rule), plan in zip(rules, plans):
            if rule.concurrency is not None:
                self.retaken += holder in self.slots.get(rid, {})  # its expired share, reclaimed here
                self.slots.setdefault(rid, {})[holder] = expiry
                self.held.setdefault(holder, set()).add(rid)
            if "tat" in plan:
                self.tat[rid] = plan["tat"]
            if "w" in plan:
                b = self.budgets.setdefault(rid, Budget())
                if plan["fresh"]:
                    b.w, b.t, b.c = plan["w"], 0, 0
                rt = tokens if rule.tokens is not None else -1
                rc = want_c if rule.cost_usd is not None else -1
                b.t += max(rt, 0)
                b.c += max(rc, 0)
                b.res[holder] = (rt, rc, plan["w"])
                b.l = plan["win"]
                self.held.setdefault(holder, set()).add(rid)
        self.holders[holder] = expiry
        return Decision(Verdict.ADMITTED, at_us=at)

    # -- giving back ------------------------------------------------------------------------

    def _give_back(self, holder: str) -> int:
        freed = 0
        for rid in self.held.pop(holder, set()):
            freed += self.slots.get(rid, {}).pop(holder, None) is not None
            b = self.budgets.get(rid)
            if b is not None:
                b.res.pop(holder, None)
        self.holders.pop(holder, None)
        return freed

    def release(self, now: int, holder: str) -> int:
        return self._give_back(holder)

    def reclaim_expired(self, now: int, limit: int = 100) -> int:
        expired = sorted((e, h) for h, e in self.holders.items() if e <= now)[:limit]
        retaken, self.retaken = self.retaken, 0
        return retaken + sum(self._give_back(h) for _e, h in expired)

    def renew(self, now: int, holder: str, lease_ms: int) -> bool:
        if self.holders.get(holder, -1) <= now:
            return False
        expiry = now + lease_ms
        self.holders[holder] = expiry
        for rid in self.held.get(holder, ()):
            if holder in self.slots.get(rid, {}):
                self.slots[rid][holder] = expiry
        return True

    def reconcile(self, now: int, holder: str, rid: str | None = None, actual_tokens: int = 0,
                  actual_cost_usd: float = 0.0) -> int:
        used_c = int(round(actual_cost_usd * 1_000_000))
        settled = 0
        for r in [rid] if rid is not None else sorted(self.held.get(holder, ())):
            b = self.budgets.get(r)
            if b is None or holder not in b.res:
                continue
            rt, rc, w = b.res.pop(holder)
            assert b.l is not None
            cur = now - now % b.l
            same = w == cur
            if not same and b.w != cur:
                b.w, b.t, b.c = cur, 0, 0
            for reserved, used, name in ((rt, actual_tokens, "t"), (rc, used_c, "c")):
                if reserved >= 0:
                    diff = used - reserved
                    if not same:
                        diff = max(diff, 0)
                    setattr(b, name, getattr(b, name) + diff)
            settled += 1
        return settled

    # -- looking ----------------------------------------------------------------------------

    def usage(self, now: int, rid: str, rule: RuleLike) -> dict[str, Any]:
        b = self.budgets.get(rid)
        raw: dict[str, str] = {}
        if b is not None and b.w is not None:
            raw = {"w": str(b.w), "t": str(b.t), "c": str(b.c), **{f"r:{h}": "" for h in b.res}}
        return usage_of(rule, now, list(self.slots.get(rid, {}).items()), self.tat.get(rid), raw)

    def snapshot(self) -> dict[str, Any]:
        """Everything stored, in the shape ``tests/test_admission.py`` reads back from Redis."""
        budgets = {}
        for rid, b in self.budgets.items():
            if b.w is None and not b.res:
                continue
            budgets[rid] = {"w": b.w, "t": b.t, "c": b.c,
                            "res": {h: list(v) for h, v in b.res.items()}}
        return {"slots": {rid: dict(s) for rid, s in self.slots.items() if s},
                "tat": dict(self.tat), "budgets": budgets, "holders": dict(self.holders),
                "held": {h: set(r) for h, r in self.held.items() if r}}
