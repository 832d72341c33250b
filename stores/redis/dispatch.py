"""What a run expects next under the Celery driver: field ``d`` of its run hash.

The commit that moves a run writes its dispatch in the same atomic call, and a message (a
tick, an effect task) is acted on only when it matches it, so the dispatch, not the broker,
decides what happens (``docs/celery.md``). It is kept as a small msgpack map with short keys,
since every run that expects a message carries one::

    {"k": "tick"}                                      a tick of the current node
    {"k": "effect", "p": PendingEffect.to_dict(),      an effect task; r is the attempt's
     "r": started record or None, "q": queue kind,     started record, already in the ledger;
     "a": admitted at (epoch ms), absent if not,       a: when flow control admitted it (its tick)
     "i": 1 when it runs inline, absent if not}        i: run inside the tick task that asked for it
    {"k": "notify"}                                    a child ended; its parent is not told yet

No field: nothing is expected (the run waits for a person, an event or a timer, or it ended).
Every dispatch is built and read here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from runtime import StepRecord
from runtime.step import PendingEffect

__all__ = ["Dispatch", "DispatchKind"]

DispatchKind = Literal["tick", "effect", "notify"]


@dataclass(frozen=True)
class Dispatch:
    """What a run expects next; build one with :meth:`tick`, :meth:`effect` or :meth:`notify`."""

    kind: DispatchKind
    #: ``effect``: the effect the task executes (wire key ``p``).
    pending: PendingEffect | None = None
    #: ``effect``: the attempt's ``started`` record as it was committed, or None when a retry's
    #: attempt has not started yet (wire key ``r``).
    started: dict[str, Any] | None = None
    #: ``effect``: the queue kind its task is sent to (wire key ``q``).
    queue: str | None = None
    #: ``effect``: when flow control admitted the attempt before its message was sent (epoch ms,
    #: Redis clock; wire key ``a``): its task need not admit it again while the share is fresh.
    admitted_ms: int | None = None
    #: ``effect``: run inside the tick task that asked for it (``workers/engine/inline.py``;
    #: wire key ``i``), not by a task of its queue, unless that task had to hand it back.
    inline: bool = False

    @classmethod
    def tick(cls) -> Dispatch:
        return _TICK

    @classmethod
    def notify(cls) -> Dispatch:
        return _NOTIFY

    @classmethod
    def effect(cls, pending: PendingEffect, *, queue: str, started: StepRecord | None = None,
               admitted_ms: int | None = None, inline: bool = False) -> Dispatch:
        """An effect task on ``queue``; ``started`` is copied as it is now (before it is chained)."""
        return cls("effect", pending, started.to_dict() if started is not None else None, queue, admitted_ms,
                   inline)

    def with_started(self, record: StepRecord) -> Dispatch:
        """This effect dispatch, its attempt now started with ``record``."""
        return replace(self, started=record.to_dict())

    def started_record(self) -> StepRecord | None:
        """A fresh, unchained copy of the ``started`` record (the landing commit chains it)."""
        if self.started is None:
            return None
        record = StepRecord.from_dict(self.started)
        record.prev_hash = record.record_hash = None
        return record

    def to_wire(self) -> dict[str, Any]:
        """The map kept in field ``d``."""
        if self.kind != "effect":
            return {"k": self.kind}
        assert self.pending is not None
        wire: dict[str, Any] = {"k": "effect", "p": self.pending.to_dict(), "r": self.started, "q": self.queue}
        if self.admitted_ms is not None:
            wire["a"] = self.admitted_ms
        if self.inline:
            wire["i"] = 1
        return wire

    @classmethod
    def from_wire(cls, value: Any) -> Dispatch:
        """The dispatch kept as ``value``; ValueError saying what is wrong when it is not one."""
        if not isinstance(value, dict):
            raise ValueError("not a map")
        kind = value.get("k")
        if kind == "tick":
            return _TICK
        if kind == "notify":
            return _NOTIFY
        if kind != "effect":
            raise ValueError(f"unknown kind {kind!r}")
        p, r, q = value.get("p"), value.get("r"), value.get("q")
        if not isinstance(p, dict) or not isinstance(r, (dict, type(None))) or not isinstance(q, (str, type(None))):
            raise ValueError("an effect dispatch needs p (a map), r (a map or nil) and q (a text or nil)")
        try:
            pending = PendingEffect.from_dict(p)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"p is not a pending effect ({type(exc).__name__}: {exc})") from None
        a = value.get("a")
        admitted = a if isinstance(a, int) and not isinstance(a, bool) else None  # a bad one: admit again
        return cls("effect", pending, r, q, admitted, value.get("i") == 1)


_TICK = Dispatch("tick")
_NOTIFY = Dispatch("notify")
