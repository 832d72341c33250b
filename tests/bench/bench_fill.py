"""Many stored runs, written fast, for ``explain.py`` and ``sweep.py``.

Not a script: the module those two import. :class:`Filler` writes each run with
``RedisBackend.commit`` itself (the same state, records, dispatch, lease, KEYS and ARGV, the
same ``commit.lua``), but the backend's script call is caught and queued, and the queued
calls go to Redis in pipelines of ``batch`` (``EVALSHA`` each, replies checked after). So a
run hash, its ledger, its results and its index entries are exactly what one commit writes,
at a tenth of the round trips. Failures kept with ``set_last_failure`` (``failure.lua``) go
the same way. A run is written in one commit, with its history as that commit's records.

:func:`build` makes one run of a kind (:data:`KINDS`): what ``explain`` should say of it is
in :data:`EXPECTED`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from runtime import Effect, EffectType, RunState, RunStatus, StepRecord, WaitReason, WaitState
from runtime.policies import compute_idempotency_key
from runtime.step import PendingEffect
from stores.redis import RedisBackend
from stores.redis.dispatch import Dispatch
from stores.redis.scripts import Reply

#: Every kind of run :func:`build` makes ("child" also writes the child run it waits on).
KINDS = ("completed", "failed", "cancelled", "tick", "effect", "retry", "expired", "user", "event", "until",
         "job", "child")
#: The ``explain`` code each kind gets (with a live consumer of every queue, an empty broker,
#: and a recent sweep).
EXPECTED = {"completed": "COMPLETED", "failed": "FAILED", "cancelled": "CANCELLED", "tick": "MOVING",
            "effect": "MOVING", "retry": "RETRY_BACKOFF", "expired": "LEASE_EXPIRED", "user": "WAITING_USER",
            "event": "WAITING_EVENT", "until": "WAITING_TIMER", "job": "WAITING_JOB", "child": "WAITING_CHILD"}
#: Runs waiting on one event key (``event`` runs share keys, as orders waiting on a payment do).
EVENT_FANIN = 100
#: Milliseconds of the lease of a running run (``tick``, ``effect``): far ahead, so it stays valid.
LIVE_LEASE_MS = 3_600_000


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_id(kind: str, i: int) -> str:
    return f"{kind}-{i:08d}"


def _vars(i: int) -> dict[str, Any]:
    return {"user_id": f"user-{i:06d}", "ticket": {"id": f"T-{i:06d}", "subject": "Refund for a double charge"},
            "amount_cents": 4250, "notes": ["customer called twice"]}


def _tool(run: RunState, node: str, seq: int) -> tuple[Effect, str]:
    effect = Effect(type=EffectType.TOOL_CALLS, payload={"tool": "lookup_order", "order": f"O-{seq}"},
                    result_key=f"r{seq}")
    return effect, compute_idempotency_key(run_id=run.run_id, node_id=node, effect=effect, effect_seq=seq)


def _history(run: RunState, steps: int) -> list[StepRecord]:
    """``steps`` completed tool calls, as nodes n0.. left them (two records per call)."""
    out = []
    for s in range(steps):
        effect, key = _tool(run, f"n{s}", s)
        started = StepRecord.start(run=run, node_id=f"n{s}", effect=effect, idempotency_key=key)
        done = StepRecord.start(run=run, node_id=f"n{s}", effect=effect, idempotency_key=key)
        out += [started, done.finish_success({"order": f"O-{s}", "status": "shipped", "items": 2})]
    return out


def build(kind: str, i: int, *, history: int = 2, wake_in_s: float = 3600.0, ledger: bool = True,
          age_s: float = 0.0) -> list[tuple[RunState, list[StepRecord], dict[str, Any]]]:
    """The commits (state, records, commit keyword arguments) that store one run of ``kind``
    (two for ``child``: the child first, then its parent). Without ``ledger``, the commits
    carry no records (the run hash and its index entries only). ``age_s``: the runs' last
    commit is dated up to that many seconds back (spread evenly over the ids), as if it were
    made then."""
    rid = run_id(kind, i)
    run = RunState.new(workflow_id=f"bench_{kind}", entry_node="n0", vars=_vars(i), run_id=rid,
                       actor_id="actor-42", session_id=f"s-{i % 1000}")
    if age_s > 0:
        back = timedelta(seconds=age_s * ((i * 7919) % 10_007) / 10_007)
        run.created_at = run.updated_at = (datetime.now(timezone.utc) - back).isoformat()
    records = _history(run, history)
    node = f"n{history}"
    run.current_node = node
    kw: dict[str, Any] = {"create": True}
    out: list[tuple[RunState, list[StepRecord], dict[str, Any]]] = []
    if kind == "completed":
        run.status, run.output = RunStatus.COMPLETED, {"ok": True, "orders": history}
    elif kind in ("failed", "cancelled"):
        effect, key = _tool(run, node, history)
        rec = StepRecord.start(run=run, node_id=node, effect=effect, idempotency_key=key)
        records.append(rec.finish_failure("TimeoutError: lookup_order timed out after 30 s"))
        run.status = RunStatus.FAILED if kind == "failed" else RunStatus.CANCELLED
        run.error = "TimeoutError: lookup_order timed out after 30 s" if kind == "failed" else "cancelled by ops"
    elif kind in ("tick", "expired"):
        kw.update(dispatch=Dispatch.tick(), lease_ms=LIVE_LEASE_MS if kind == "tick" else 0)
    elif kind in ("effect", "retry"):
        effect, key = _tool(run, node, history)
        attempt = 1 if kind == "effect" else 2
        pending = PendingEffect(run_id=rid, node_id=node, effect=effect, idempotency_key=key,
                                default_next_node=f"n{history + 1}", attempt=attempt, max_attempts=3)
        started = StepRecord.start(run=run, node_id=node, effect=effect, idempotency_key=key, attempt=1)
        if kind == "effect":
            records.append(started)
            kw.update(dispatch=Dispatch.effect(pending, queue="tools", started=started), lease_ms=LIVE_LEASE_MS)
        else:  # attempt 1 failed; attempt 2 waits for its backoff (its lease is backoff + effect lease)
            records.append(started.finish_failure("ConnectionError: upstream reset"))
            kw.update(dispatch=Dispatch.effect(pending, queue="tools"), lease_ms=LIVE_LEASE_MS)
    else:
        run.status = RunStatus.WAITING
        if kind == "user":
            wait = WaitState(reason=WaitReason.USER, wait_key=f"user:{rid}", prompt="Approve the refund?",
                             choices=["yes", "no"], resume_to_node=f"n{history + 1}", result_key="answer")
        elif kind == "event":
            wait = WaitState(reason=WaitReason.EVENT, wait_key=f"payment:{i // EVENT_FANIN}",
                             resume_to_node=f"n{history + 1}", result_key="payment")
        elif kind == "until":
            until = datetime.now(timezone.utc) + timedelta(seconds=wake_in_s + (i % 600))
            wait = WaitState(reason=WaitReason.UNTIL, wait_key=f"until:{rid}", until=until.isoformat(),
                             resume_to_node=f"n{history + 1}")
        elif kind == "job":
            wait = WaitState(reason=WaitReason.JOB, wait_key=f"job:{rid}", resume_to_node=f"n{history + 1}",
                             result_key="job")
        elif kind == "child":
            child = RunState.new(workflow_id="bench_child", entry_node="ask", vars={"parent": rid},
                                 run_id=run_id("childof", i), parent_run_id=rid)
            child.status = RunStatus.WAITING
            child.waiting = WaitState(reason=WaitReason.USER, wait_key=f"user:{child.run_id}",
                                      prompt="Sign off?", resume_to_node="done")
            out.append((child, [], {"create": True}))
            wait = WaitState(reason=WaitReason.SUBWORKFLOW, wait_key=f"subworkflow:{child.run_id}",
                             resume_to_node=f"n{history + 1}", result_key="child")
        else:
            raise ValueError(f"unknown kind {kind!r}")
        run.waiting = wait
        effect_type = {"user": EffectType.ASK_USER, "event": EffectType.WAIT_EVENT, "until": EffectType.WAIT_UNTIL,
                       "job": EffectType.WAIT_EVENT, "child": EffectType.START_SUBWORKFLOW}[kind]
        rec = StepRecord.start(run=run, node_id=node, effect=Effect(type=effect_type, payload={}))
        records.append(rec.finish_waiting(wait))
    out.append((run, records if ledger else [], kw))
    return out


class Filler:
    """Commits through ``backend`` whose script calls are sent in pipelines of ``batch``."""

    def __init__(self, backend: RedisBackend, *, batch: int = 500) -> None:
        self.backend, self.batch = backend, batch
        self.queued: list[tuple[Any, Any, Any]] = []
        self.written = 0
        # The reply the backend sees at once (OK, version 1, fencing token); the real ones are
        # checked when the pipeline runs.
        for name, reply in (("_commit_script", [Reply.OK, 1, 0]), ("_set_failure_script", Reply.OK)):
            setattr(backend, name, self._catcher(getattr(backend, name), reply))

    def _catcher(self, script: Any, reply: Any) -> Callable[..., Any]:
        def catch(keys: Any = None, args: Any = None, client: Any = None) -> Any:
            self.queued.append((script, keys, args))
            if len(self.queued) >= self.batch:
                self.flush()
            return reply

        return catch

    def flush(self) -> None:
        if not self.queued:
            return
        pipe = self.backend.client.pipeline(transaction=False)
        for script, keys, args in self.queued:
            script(keys=keys, args=args, client=pipe)
        for (_script, keys, _args), reply in zip(self.queued, pipe.execute()):
            code = reply[0] if isinstance(reply, list) else reply
            if int(code) != Reply.OK:
                raise RuntimeError(f"a queued write to {keys[0]} was refused: {reply!r}")
        self.written += len(self.queued)
        self.queued.clear()

    def commit(self, run: RunState, records: list[StepRecord], **kw: Any) -> None:
        self.backend.commit(run, records, **kw)
        if run.status == RunStatus.FAILED:
            self.backend.set_last_failure(run.run_id, {
                "where": "effect", "node": run.current_node, "attempt": 3, "type": "TimeoutError",
                "message": run.error, "at": run.updated_at,
                "traceback": "Traceback (most recent call last):\n  ...\nTimeoutError: lookup_order timed out\n" * 8})
        # The backend remembers each run it wrote; a filler writes each once.
        self.backend._known.pop(run.run_id, None)


def fill(backend: RedisBackend, plan: Iterable[tuple[str, int]], total: int, *, what: str = "runs",
         **build_kw: Any) -> dict[str, list[str]]:
    """Write the runs of ``plan`` ((kind, count) pairs); returns the ids written per kind (the
    parents for ``child``), with progress on stderr every few seconds."""
    filler = Filler(backend)
    ids: dict[str, list[str]] = {}
    t0 = last = time.monotonic()
    done = 0
    for kind, count in plan:
        for i in range(count):
            for run, records, kw in build(kind, i, **build_kw):
                filler.commit(run, records, **kw)
            ids.setdefault(kind, []).append(run_id(kind, i))
            done += 1
            if time.monotonic() - last > 5:
                last = time.monotonic()
                log(f"  {done:,}/{total:,} {what} written ({done / (last - t0):,.0f}/s)")
    filler.flush()
    secs = time.monotonic() - t0
    log(f"  {done:,} {what} ({filler.written:,} script calls) written in {secs:.1f} s "
        f"({done / max(secs, 1e-9):,.0f}/s)")
    return ids


def split(total: int, weights: dict[str, int]) -> list[tuple[str, int]]:
    """``total`` runs shared among kinds by weight (the remainder to the first kind)."""
    whole = sum(weights.values())
    counts = {k: total * w // whole for k, w in weights.items()}
    first = next(iter(counts))
    counts[first] += total - sum(counts.values())
    return [(k, n) for k, n in counts.items() if n > 0]
