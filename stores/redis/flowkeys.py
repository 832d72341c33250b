"""Key names of flow control (issue 14): the limits registry, the price table, and the state of
each rule on each concrete key (its slot holders, its rate bucket, its budget window).

Every key carries one hash tag, ``{<prefix>-flow}``, so that one admission, which checks the
rules of every key on a run's path at once, touches a single Redis Cluster slot: one script
call, atomic. The consequence on Cluster: all flow control lives on one node (its load is one
small script per admission and per release; ``docs/redis-layout.md``).

A *rule id* names one rule on one concrete key: ``<key>|<scope>|<name>`` (``tenant:acme|*|limit``).
A pattern rule (``tenant:*``) is stored once under its pattern id and counted per concrete key:
its state keys use the concrete key's id (``tenant:acme|*|limit``, ``tenant:beta|*|limit``).
"""

from __future__ import annotations

__all__ = ["FlowKeys", "rule_id"]


def rule_id(key: str, scope: str, name: str) -> str:
    """``tenant:acme|*|limit``: one rule on one key (or pattern)."""
    return f"{key}|{scope}|{name}"


class FlowKeys:
    """Flow-control key names under one prefix (default ``ar``)."""

    def __init__(self, prefix: str = "ar") -> None:
        self.prefix = prefix
        self._t = f"{prefix}:{{{prefix}-flow}}:"

    def limits(self) -> str:
        """HASH: rule id -> the rule's JSON (``LimitRule.to_dict``); the registry, editable at runtime."""
        return self._t + "limits"

    def prices(self) -> str:
        """HASH: model name -> JSON ``{"input_usd_per_mtok", "output_usd_per_mtok"}``; field ``*``:
        the price of a model not listed."""
        return self._t + "prices"

    def slots(self, rid: str) -> str:
        """ZSET: holder id -> lease expiry (epoch ms, Redis clock); the holders of a concurrency rule."""
        return self._t + "slots:" + rid

    def rate(self, rid: str) -> str:
        """STRING: the GCRA theoretical arrival time (epoch µs, Redis clock) of a rate rule."""
        return self._t + "rate:" + rid

    def budget(self, rid: str) -> str:
        """HASH: ``w`` window start (epoch ms), ``l`` window length (ms), ``t`` tokens and ``c`` cost
        (micro-dollars) spent or reserved in that window; ``r:<holder>`` the holder's open reservation
        ``"tokens,micro-dollars,window start"`` (-1: the rule does not count that one)."""
        return self._t + "budget:" + rid

    def deferred(self, key: str) -> str:
        """ZSET: the fair-dispatch queue of one fairness key (member: an item id, its item in
        :meth:`items`), scored by priority then arrival (``priority * 1e15 + arrival sequence``)."""
        return self._t + "deferred:" + key

    def unqueued(self) -> str:
        """ZSET never written: what an admission that may overtake any queue, or a release that
        asks for no size, names in place of a queue (a script's KEYS are fixed)."""
        return self._t + "unqueued"

    def retaken(self) -> str:
        """STRING: slots taken again by a holder whose lease had expired (``admit.lua``); the
        sweep counts them in ``slots_reclaimed`` and resets it."""
        return self._t + "retaken"

    def items(self) -> str:
        """HASH: item id -> the deferred item's JSON (what the dispatcher admits and sends)."""
        return self._t + "items"

    def ready(self) -> str:
        """ZSET: fairness keys with deferred work, scored by when their head may be tried (epoch ms)."""
        return self._t + "ready"

    def passes(self) -> str:
        """HASH: fairness key -> its pass in weighted round robin (the lowest is served next);
        field ``""`` the pass last served, ``#seq`` the arrival sequence of parked items."""
        return self._t + "passes"

    def dispatching(self) -> str:
        """STRING, expiring: the lock of the one dispatcher pass running in the fleet."""
        return self._t + "dispatching"

    def dirty(self) -> str:
        """STRING: work was parked or released while a dispatcher pass ran: run one more."""
        return self._t + "dirty"

    def wake_at(self) -> str:
        """STRING, expiring: when the next timed dispatcher pass is already scheduled (epoch ms)."""
        return self._t + "wake-at"

    def holders(self) -> str:
        """ZSET: holder id -> lease expiry, across every rule: what the sweep reclaims when expired
        (the holder's rule ids are in :meth:`held`)."""
        return self._t + "holders"

    def warned(self, rid: str, window_start_ms: int) -> str:
        """STRING, expiring with its window: a ``budget.warning`` event was sent for this rule's
        window (one per window)."""
        return self._t + f"warned:{rid}:{window_start_ms}"

    def held(self, holder: str) -> str:
        """SET: the rule ids a holder holds a slot or a reservation of (released together)."""
        return self._t + "held:" + holder
