"""What moves runs, read from Redis and the broker: live processes, queue depths, and the
:class:`~workers.explain.Facts` of one run for :func:`~workers.explain.diagnose`.

The facts of a run cost a bounded number of Redis commands whatever the store holds (no
scan): its hash and the Redis clock, its lease or timer, the sweep heartbeat, the wait-key
count, the heartbeats (two commands), the queue depth (one LLEN per priority level on a
Redis broker, a passive ``queue_declare`` on RabbitMQ), and a child or two. The test in
``tests/test_explain.py`` counts them (at most :data:`MAX_COMMANDS`).
"""

from __future__ import annotations

from typing import Any

from runtime import RunStatus
from runtime.errors import RunNotFound
from stores.redis.indexes import json_map

from .explain import Diagnosis, Facts, diagnose
from .heartbeat import ALIVE_WITHIN_S
from .settings import QUEUE_KINDS, WorkerSettings

__all__ = ["BrokerProbe", "BrokerUnreachable", "gather", "explain_run", "consumers_by_queue", "MAX_COMMANDS",
           "MAX_CHILD_DEPTH"]

#: Redis commands (store and broker) one ``explain`` may send, whatever the store size.
MAX_COMMANDS = 15
#: Levels of children a ``WAITING_CHILD`` diagnosis looks into.
MAX_CHILD_DEPTH = 2


class BrokerUnreachable(Exception):
    """Raised when the broker cannot be asked about a queue; the message masks the URL's secrets."""


class BrokerProbe:
    """Asks the broker how many messages a queue holds (one connection, opened on first use)."""

    def __init__(self, app: Any, settings: WorkerSettings) -> None:
        self.app, self.settings = app, settings
        self._conn: Any = None

    def depth(self, queue: str) -> int:
        """Messages waiting in ``queue``: the LLENs of its priority lists on a Redis broker, the
        ``message_count`` of a passive ``queue_declare`` elsewhere (0 when the queue does not exist)."""
        try:
            if self._conn is None:
                self._conn = self.app.connection_for_read()
                self._conn.ensure_connection(max_retries=1, timeout=3)
            channel = self._conn.default_channel
            client = getattr(channel, "client", None) if self._conn.transport.driver_type == "redis" else None
            if client is not None:
                # kombu's Redis transport keeps one list per priority level: the name, then name+sep+level.
                sep = getattr(channel, "sep", "\x06\x16")
                names = [queue] + [f"{queue}{sep}{p}" for p in getattr(channel, "priority_steps", [0, 3, 6, 9]) if p]
                pipe = client.pipeline(transaction=False)
                for name in names:
                    pipe.llen(name)
                return sum(int(n) for n in pipe.execute())
            try:
                return int(channel.queue_declare(queue=queue, passive=True).message_count)
            except Exception as exc:  # a queue never declared: nothing in it
                if getattr(exc, "code", None) == 404:
                    self.close()
                    return 0
                raise
        except Exception as exc:
            self.close()
            raise BrokerUnreachable(f"{self.settings.describe_broker()}: {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.release()
            finally:
                self._conn = None


def consumers_by_queue(processes: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Queue name -> the live worker processes (``process_id``) that consume it."""
    out: dict[str, list[str]] = {}
    for p in processes:
        if p.get("kind") == "worker":
            for q in p.get("queues") or ():
                out.setdefault(str(q), []).append(str(p["process_id"]))
    return out


def _queue_of(settings: WorkerSettings, dispatch: Any) -> str:
    kind = dispatch.queue if dispatch.kind == "effect" and dispatch.queue in QUEUE_KINDS else "ticks"
    return settings.queue(kind)


def gather(backend: Any, settings: WorkerSettings, run_id: str, *, broker: BrokerProbe | None = None,
           depth: int = 0) -> Facts:
    """The facts of one run (:class:`RunNotFound` when there is none). A child (``depth`` > 0)
    is read lightly: no heartbeats, no broker."""
    loaded = backend.load_for_driver(run_id)
    if loaded is None:
        raise RunNotFound(run_id)
    run, d, now = loaded.run, loaded.dispatch, loaded.now_ms
    status = RunStatus(run.status).value
    w = run.waiting if status == "waiting" else None
    waiting = w.to_dict() if w is not None else None
    facts: dict[str, Any] = {"run_id": run.run_id, "status": status, "workflow_id": run.workflow_id,
                             "node": run.current_node, "updated_at": run.updated_at, "now_ms": now,
                             "waiting": waiting, "error": run.error,
                             "effect_lease_ms": int(settings.effect_lease_s * 1000)}
    if status == "failed":
        facts["last_failure"] = backend.last_failure(run_id)
    elif waiting is not None:
        reason, key = waiting.get("reason"), waiting.get("wait_key")
        if reason == "event" and key:
            facts["waiters"] = backend.count_waiting_on(key)
        elif reason == "until":
            facts["timer_ms"] = backend.timer_ms(run_id)
            if depth == 0:
                facts["last_sweep_ms"] = backend.last_sweep_ms()
        elif reason == "subworkflow" and key:
            child_id = str(key).removeprefix("subworkflow:")
            facts["child_id"] = child_id
            if depth < MAX_CHILD_DEPTH:
                try:
                    facts["child"] = gather(backend, settings, child_id, depth=depth + 1)
                except RunNotFound:
                    pass
    elif status == "running":
        facts["lease_ms"] = backend.lease_ms(run_id)
        facts.update(lost=loaded.lost, poison_after=settings.poison_after, token=loaded.token,
                     regranted_ms=loaded.regranted_ms)
        if d is not None and d.kind in ("effect", "tick"):
            deferred = json_map(backend.client.hget(backend.keys.run(run_id), "a"))
            facts["deferred"] = _deferral_details(backend, deferred) if deferred else None
        if d is not None:
            facts["dispatch"] = d.kind
            facts["queue"] = _queue_of(settings, d)
            if d.kind == "effect" and d.pending is not None:
                p = d.pending
                facts.update(effect_type=getattr(p.effect.type, "value", str(p.effect.type)), attempt=p.attempt,
                             max_attempts=p.max_attempts, attempt_started=d.started is not None)
                if d.inline:
                    names = [c.get("name") for c in (p.effect.payload or {}).get("tool_calls") or []
                             if isinstance(c, dict)]
                    facts["inline"] = ", ".join(map(str, names)) or facts["effect_type"]
                if d.started is None and p.attempt > 1:
                    last = backend.ledger.last_record(run_id) or {}
                    facts["last_error"] = last.get("error")
        if depth == 0:
            _fleet_facts(backend, settings, facts, broker, now)
    return Facts(**facts)


def _deferral_details(backend: Any, info: dict[str, Any]) -> dict[str, Any]:
    """What ``explain`` says of a deferred run beside its rule: a slot rule's live holders (the
    one whose lease ends first named, with what it runs), and the run's place in its key's
    fair-dispatch queue."""
    from runtime.models import validate_run_id
    from stores.redis.flowkeys import FlowKeys

    from .flow.resolve import registry, rules_for_key

    keys = FlowKeys(backend.keys.prefix)
    out = dict(info)
    rid = str(info.get("rule_id") or "")
    if info.get("kind") == "concurrency" and rid:
        concrete = rid.split("|")[0]
        rule = dict(rules_for_key(registry(backend).rules(), concrete)).get(rid)
        now = backend.time_ms()
        live = [(int(s), m.decode() if isinstance(m, bytes) else str(m))
                for m, s in backend.client.zrangebyscore(keys.slots(rid), f"({now}", "+inf", withscores=True)]
        out["holders"] = len(live)
        out["limit"] = rule.concurrency if rule is not None else None
        if live:
            expires, holder = live[0]
            run, _, step = holder.partition("/")
            what = "start" if step == "start" else "effect"
            try:
                loaded = backend.load_for_driver(validate_run_id(run))
                p = loaded.dispatch.pending if loaded is not None and loaded.dispatch is not None else None
                if p is not None and step != "start":
                    what = str(getattr(p.effect.type, "value", p.effect.type)).replace("_", " ").rstrip("s")
            except ValueError:
                pass
            out["first_holder"] = {"run_id": run, "what": what, "expires_ms": expires}
    fkey = info.get("queue_key")
    item = info.get("item_id")
    if fkey and item:
        rank = backend.client.zrank(keys.deferred(str(fkey)), str(item))
        if rank is not None:
            out["position"] = int(rank) + 1
            out["depth"] = int(backend.client.zcard(keys.deferred(str(fkey))))
    return out


def _fleet_facts(backend: Any, settings: WorkerSettings, facts: dict[str, Any], broker: BrokerProbe | None,
                 now: int) -> None:
    """What moves a running run: the sweep, the live consumers of its queue and the queue's depth."""
    facts["last_sweep_ms"] = backend.last_sweep_ms()
    queue = facts.get("queue")
    if queue is None:
        return
    live = backend.live_processes(now - int(ALIVE_WITHIN_S * 1000))
    facts["consumers"] = tuple(consumers_by_queue(live).get(queue, ()))
    if broker is not None:
        try:
            facts["queue_depth"] = broker.depth(queue)
        except BrokerUnreachable as exc:
            facts["broker_error"] = str(exc)


def explain_run(backend: Any, settings: WorkerSettings, run_id: str, *, broker: BrokerProbe | None = None
                ) -> Diagnosis:
    """Why ``run_id`` is where it is: :func:`gather` then :func:`~workers.explain.diagnose`."""
    return diagnose(gather(backend, settings, run_id, broker=broker))
