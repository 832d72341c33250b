"""Fair dispatch (issue 14, item 3): deferred work waits in a queue per fairness key, and a
dispatcher serves the keys by weighted round robin, so that a tenant with 1,000 queued items
does not delay a tenant with one.

What waits here: a run's start deferred by a rule (``Client.start`` parks it instead of
sending its first tick) and an effect attempt deferred by the tick that requests it (parked
instead of sent) or when its task starts (a retry or a re-sent message: parked instead of
run). An item is parked under its run's *fairness key*, the outermost named key of its path
(its tenant, else its user, else its agent), at the run's priority (1 first, 5 last;
``Client.start(priority=)``) then in arrival order.

A *pass* of the dispatcher (one at a time in the fleet: a lock, and a flag that makes the
holder run one more pass when work was parked or released meanwhile) takes the ready key with
the lowest pass, admits its head on the item's behalf (the same admission script; the holder
is the attempt, so the task's own admission finds its share taken), and sends its message; the
key's pass grows by ``1 / weight`` (the largest ``weight`` of the key's rules). A key deferred by
a slot stays ready (a release tries it again); one deferred by a rate or a budget waits until
the rule's time (a timed pass is sent for the earliest). A pass stops early when a ``global``
rule for every admission defers: nothing else could pass it.

Passes run after each park, after each release while anything is queued, from the sweep
(a backstop), and at the timed wakes. A parked item's run keeps its lease: the sweep renews it
instead of sending the message again (``is_parked``), so a long wait is not a lost message,
and a lost queue entry still costs one lease period, never the run.
"""

from __future__ import annotations

import logging
from typing import Any

from runtime import RunState
from runtime.step import PendingEffect
from stores.redis.admission import Decision, Verdict
from stores.redis.flowqueue import DEFAULT_PRIORITY, FlowQueue

from .resolve import Applicable, rules_for_key
from .rules import FLOW_VARS

__all__ = ["FairDispatch", "fairness_key", "effect_item_id", "start_item_id", "start_holder"]

logger = logging.getLogger("workers.engine")

#: Items one pass sends at most (the next pass, right after, goes on).
PASS_BATCH = 200
#: Admissions one pass tries at most (deferred ones included).
PASS_TRIES = 400
#: Passes one call runs at most while work keeps arriving (the next call, or the sweep, goes on).
PASSES_MAX = 20


def fairness_key(path: list[str]) -> str:
    """The queue a run's deferred work waits in: its tenant, else its user, else its agent."""
    named = [k for k in path if k != "global"]
    return named[0] if named else "global"


def start_holder(run_id: str) -> str:
    """The holder a run's start takes its shares as (released at its first tick's commit)."""
    return f"{run_id}/start"


def start_item_id(run_id: str) -> str:
    return f"s|{run_id}"


def effect_item_id(holder: str) -> str:
    return f"e|{holder}"


def priority_of(run: RunState) -> int:
    flow = run.vars.get(FLOW_VARS)
    value = flow.get("priority") if isinstance(flow, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 5 else DEFAULT_PRIORITY


class FairDispatch:
    """The engine's fair dispatch (one per engine; ``engine`` sends the messages and fails a
    run whose start a rule refuses)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.gate = engine.flow
        self.backend = engine.backend
        self.queue = FlowQueue(self.backend.client, self.gate.keys)

    # -- parking -------------------------------------------------------------------------------

    def defer(self, run: RunState, v: int, decision: Decision, rules: list[Applicable], now_ms: int, *,
              pending: PendingEffect | None = None, queue_kind: str = "ticks") -> None:
        """Park a deferred run start (``pending`` None: its first tick unsent) or effect attempt
        (by its tick, or at its task's start; its task goes to ``queue_kind``) in its key's queue.
        The run keeps why in field ``a`` (for ``explain``); then a pass over that key runs, in
        case what deferred it was given back in between."""
        from .gate import _kind, _model_and_tools, holder_of

        path = self.gate.path_of(run)
        fkey = fairness_key(path)
        item: dict[str, Any] = {"r": run.run_id, "v": v, "w": run.workflow_id, "n": run.current_node, "p": path}
        if pending is None:
            item_id = start_item_id(run.run_id)
            item.update(k="start", kind="run", h=start_holder(run.run_id))
        else:
            estimate = self.gate.estimate(run, pending, rules)
            tokens, cost = estimate if isinstance(estimate, tuple) else (0, 0.0)
            model, tools = _model_and_tools(pending)
            holder = holder_of(run.run_id, pending)
            item_id = effect_item_id(holder)
            item.update(k="effect", key=pending.idempotency_key, at=pending.attempt, q=queue_kind,
                        kind=_kind(pending), model=model, tools=list(tools), tok=tokens, usd=cost, h=holder)
        # why first, then the park: a pass sending it at once has its commit remove ``a`` after
        self.gate.keep_deferral(run.run_id, decision, rules, now_ms, parked=(fkey, item_id))
        self.queue.park(item_id, fkey, item, priority=priority_of(run),
                        ready_at_ms=None if decision.kind == "concurrency" else decision.until_ms)
        logger.info("run %s: its %s was deferred by flow-control rule %s (%s); parked for fair dispatch",
                    run.run_id, "start" if pending is None else item["kind"],
                    decision.rule_id or "(its key's queue)", decision.kind)
        self.after_park(fkey)

    def is_parked(self, run_id: str, pending: PendingEffect | None) -> bool:
        """Does the run's expected message wait in a fair-dispatch queue (the sweep leaves it)?"""
        from .gate import holder_of

        item = start_item_id(run_id) if pending is None else effect_item_id(holder_of(run_id, pending))
        return self.queue.is_parked(item)

    # -- serving -------------------------------------------------------------------------------

    def dispatch(self) -> int:
        """Run dispatcher passes over every ready key while work keeps arriving (or leave it to
        the pass running elsewhere, which then runs one more); the items sent. After a release,
        at a timed refill, and from the sweep."""
        self.queue.mark_dirty()
        return self._passes(None)

    def after_park(self, fkey: str) -> int:
        """After parking under ``fkey``: a pass over that key alone, in case what deferred it was
        given back between its admission and its park (a release then saw nothing queued). When
        a pass runs elsewhere, that one is asked to run once more instead. Parking costs one
        admission, however many keys wait."""
        return self._passes(fkey)

    def _passes(self, only: str | None) -> int:
        q = self.queue
        sent = 0
        ttl = max(5_000, int(self.engine.settings.effect_lease_s * 1000))
        for _ in range(PASSES_MAX):
            with q.lock(ttl) as got:
                if not got:
                    q.mark_dirty()  # the pass running elsewhere sees it when it ends
                    return sent
                if only is None:
                    q.clear_dirty()
                sent += self._pass(only)
            only = None  # what is left: passes over every key, while anyone asked for one
            if not self.backend.client.exists(self.gate.keys.dirty()):
                break
        return sent

    def _weight(self, fkey: str, rules: list[Any]) -> int:
        weights = [r.weight for _rid, r in rules_for_key(rules, fkey)] if fkey != "global" else []
        return max(weights) if weights else 1

    def _pass(self, only: str | None = None) -> int:
        q = self.queue
        now = self.backend.time_ms()
        candidates = q.ready(now, only=only)
        if not candidates:
            self._schedule_wake(now)
            return 0
        registry_rules = self.gate.resolver.rules()
        weights = {fkey: self._weight(fkey, registry_rules) for fkey, _pass in candidates}
        blocked: set[str] = set()  # rules that deferred an item in this pass: they stay full for it
        sent = tries = 0
        while candidates and sent < PASS_BATCH and tries < PASS_TRIES:
            fkey, turn = candidates[0]
            head = q.head(fkey)
            if head is None:
                q.take(fkey, "")  # an empty queue leaves the ready set
                candidates.pop(0)
                continue
            item_id, item = head
            if blocked and not blocked.isdisjoint(self._rule_ids(item)):
                candidates.pop(0)  # held back by a rule found full in this pass: no admission tried
                continue
            tries += 1
            outcome, decision = self._serve(item)
            if outcome in ("sent", "dropped"):
                left = q.take(fkey, item_id, weight=weights[fkey] if outcome == "sent" else None)
                if outcome == "sent":
                    sent += 1
                    turn += 1.0 / weights[fkey]
                candidates.pop(0)
                if left:
                    candidates.append((fkey, turn))
                    candidates.sort(key=lambda kp: (kp[1], kp[0]))
                continue
            candidates.pop(0)
            assert decision is not None
            if decision.rule_id:
                blocked.add(decision.rule_id)
            if decision.kind != "concurrency" and decision.until_ms is not None:
                q.hold(fkey, decision.until_ms)
            if (decision.rule_id or "").startswith("global|*|"):
                candidates = []  # a global rule on every admission: nothing else passes it now
                break
        if candidates:  # stopped by its batch or its tries with keys still ready: one more pass
            q.mark_dirty()
        self._schedule_wake(now)
        return sent

    def _schedule_wake(self, now: int) -> None:
        """A timed pass at the earliest rate or budget refill among held keys."""
        first = self.backend.client.zrangebyscore(self.gate.keys.ready(), f"({now}", "+inf", start=0, num=1,
                                                  withscores=True)
        if not first:
            return
        at = int(first[0][1])
        if self.queue.schedule_wake(at, now):
            self.engine.dispatcher.flow(countdown=max(0.0, (at - now) / 1000))

    def _rules(self, item: dict[str, Any]) -> list[Applicable]:
        path = [str(k) for k in item.get("p") or []]
        found: list[Applicable] = self.gate.resolver.applicable(
            path, str(item.get("kind")), model=item.get("model"), tools=tuple(item.get("tools") or ()))
        return found

    def _rule_ids(self, item: dict[str, Any]) -> set[str]:
        return {rid for rid, _rule in self._rules(item)}

    def _serve(self, item: dict[str, Any]) -> tuple[str, Decision | None]:
        """Admit one parked item on its behalf and send its message: ``sent``; ``dropped`` (its
        run moved on, or it runs already); ``deferred`` with the decision."""
        run_id = item.get("r")
        if not isinstance(run_id, str) or item.get("k") not in ("start", "effect"):
            logger.warning("flow: dropping a malformed deferred item %r", item)
            return "dropped", None
        raw_v, raw_g = self.backend.client.hmget(self.backend.keys.run(run_id), "v", "g")
        if raw_v is None or int(raw_v) != int(item.get("v") or -1):
            return "dropped", None  # cancelled, or moved on (a re-sent message ran it)
        token = int(raw_g) if raw_g is not None else None
        rules = self._rules(item)
        start = item["k"] == "start"
        lease = self.engine._tick_lease if start else self.engine._effect_lease
        decision = Decision(Verdict.ADMITTED)
        if rules:
            decision = self.gate.admission.acquire(str(item.get("h")), rules, tokens=int(item.get("tok") or 0),
                                                   cost_usd=float(item.get("usd") or 0.0), lease_ms=lease)
        if decision.verdict is Verdict.DEFERRED:
            return "deferred", decision
        if decision.again:
            return "dropped", None  # its holder is live: a re-sent message runs it already
        if decision.verdict is Verdict.REFUSED and start:
            self.engine.refuse_start(run_id, int(item["v"]), decision, rules)
            return "dropped", None
        # admitted (or an effect refused: its task is refused again and fails the attempt for good).
        # The message gets a whole lease to be picked up, as after a commit: a lease that ran out
        # while it waited in the broker would make the sweep send a second one.
        if token is not None and not self.backend.renew_held_lease(run_id, token, lease):
            return "dropped", None  # granted again since: the sweep's message runs it
        send = self.engine.dispatcher
        if start:
            send.tick(run_id, int(item["v"]), workflow=item.get("w"), node=item.get("n"), token=token)
        else:
            send.effect(str(item.get("q") or "ticks"), run_id, int(item["v"]), str(item.get("key")),
                        int(item.get("at") or 1), workflow=item.get("w"), node=item.get("n"), token=token)
        return "sent", decision
