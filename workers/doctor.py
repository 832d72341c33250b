"""``abstractruntime doctor``: is everything a deployment needs up, and what to do if not."""

from __future__ import annotations

from typing import Any

from .fleet import BrokerProbe, BrokerUnreachable
from .heartbeat import ALIVE_WITHIN_S
from .settings import QUEUE_KINDS, WorkerSettings

__all__ = ["run_checks"]

#: Seconds a timer may be past due before doctor calls it overdue.
OVERDUE_S = 5.0


def _check(name: str, status: str, detail: str, advice: str = "") -> dict[str, Any]:
    return {"check": name, "status": status, "detail": detail, "advice": advice}


def run_checks(settings: WorkerSettings, env: dict[str, str]) -> list[dict[str, Any]]:
    """Each check as ``{"check", "status": ok|warn|fail, "detail", "advice"}``; stops early when
    Redis is unreachable (nothing else can be checked then)."""
    from stores.redis import RedisBackend
    from stores.redis.errors import RedisUnavailable

    checks: list[dict[str, Any]] = []
    try:
        backend = RedisBackend.from_settings(settings.redis)
    except RedisUnavailable as exc:
        checks.append(_check("redis", "fail", str(exc), "start Redis, or fix ABSTRACTRUNTIME_REDIS_URL"))
        return checks
    info = backend.server_info()
    aof = info["aof_enabled"]
    checks.append(_check("redis", "ok" if aof else "warn",
                         f"Redis {info['redis_version']} at {settings.redis.url or 'the embedded server'}; "
                         f"append-only file {'on' if aof else 'off'}",
                         "" if aof else "turn on appendonly, or a Redis restart loses every run"))

    from .app import create_app

    app = create_app(settings)
    try:
        try:
            with app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=3)
            checks.append(_check("broker", "ok", f"reachable: {settings.describe_broker()}"))
        except Exception as exc:
            checks.append(_check("broker", "fail", f"{settings.describe_broker()}: {type(exc).__name__}: {exc}",
                                 "start the broker, or fix ABSTRACTRUNTIME_BROKER_URL"))
            return checks
        try:
            active = app.control.inspect(timeout=1.5).active_queues() or {}
        except Exception as exc:  # a broker without remote control
            active = {}
            checks.append(_check("workers", "warn", f"cannot ask the workers: {type(exc).__name__}: {exc}"))
        consumers: dict[str, list[str]] = {}
        for worker, queues in active.items():
            for q in queues or []:
                consumers.setdefault(q.get("name", ""), []).append(worker)
        # The heartbeats (workers/heartbeat.py) also name the consumers, where remote control is off.
        for proc in backend.live_processes(backend.time_ms() - int(ALIVE_WITHIN_S * 1000)):
            if proc.get("kind") == "worker":
                for q in proc.get("queues") or ():
                    names = consumers.setdefault(str(q), [])
                    if proc.get("hostname") not in names:
                        names.append(str(proc.get("hostname")))
        probe = BrokerProbe(app, settings)
        for kind in QUEUE_KINDS:
            name = settings.queue(kind)
            names = consumers.get(name, [])
            essential = kind in ("ticks", "timers", "maintenance")
            try:
                waiting = f"; {probe.depth(name)} message(s) queued"
            except BrokerUnreachable:
                waiting = ""
            checks.append(_check(
                f"queue {name}", "ok" if names else ("fail" if essential else "warn"),
                f"{len(names)} worker(s)" + (f": {', '.join(sorted(names))}" if names else "") + waiting,
                f"start one: abstractruntime worker --queues {kind}"))
        probe.close()
    finally:
        app.close()

    now = backend.time_ms()
    last = backend.last_sweep_ms()
    limit_s = max(5 * settings.sweep_period_s, 5.0)
    if last is None:
        checks.append(_check("beat", "fail", "no recovery sweep has run yet",
                             "start exactly one: abstractruntime beat"))
    else:
        age = (now - last) / 1000
        checks.append(_check("beat", "ok" if age <= limit_s else "fail", f"last sweep {age:.1f}s ago",
                             "start exactly one: abstractruntime beat"))
    overdue = backend.count_timers_due(now - int(OVERDUE_S * 1000))
    checks.append(_check("timers", "ok" if not overdue else "warn",
                         f"{overdue} timer(s) more than {OVERDUE_S:g}s overdue",
                         "check that a worker consumes the timers and maintenance queues and that beat runs"))
    stuck = backend.count_leases_expired(now)
    checks.append(_check("runs", "ok" if not stuck else "warn",
                         f"{stuck} run(s) whose lease expired (a message lost or a worker gone)",
                         "the sweep sends their message again; if this stays, check the workers' logs"))
    from .stuck import stuck_counts  # the stuck detector's own count (workers/stuck.py), by cause

    by_cause = stuck_counts(backend)
    total = sum(by_cause.values())
    checks.append(_check("stuck runs", "ok" if not total else "warn",
                         f"{total} run(s) stuck" + (": " + ", ".join(f"{n} {c}" for c, n in by_cause.items())
                                                    if total else ""),
                         "list them: abstractruntime stuck; why and what to do: abstractruntime explain RUN_ID"))
    dead = backend.count_dead_letters()
    key = backend.keys.dead_letters()
    checks.append(_check("dead letters", "ok" if not dead else "warn", f"{dead} refused message(s) in {key}",
                         f"read them: redis-cli LRANGE {key} 0 20 (each names its task and reason)"))
    checks.extend(_schedules(backend, now))
    backend.close()
    return checks


def _schedules(backend: Any, now_ms: int) -> list[dict[str, Any]]:
    """One line per schedule: its last fire (and what it did) and its next; a warning when a
    fire is overdue (no sweep ran it: beat is down)."""
    from .engine.schedules import Schedules

    out = []
    for name in backend.schedule_names():
        found = backend.load_schedule(name)
        if found is None:
            continue
        s = Schedules.describe_schedule(found[1], now_ms)
        detail = (f"{s['cron']} ({s['timezone']}) starts {s['workflow_id']}: last fire {s['last_fire'] or 'never'} "
                  f"({s['last_outcome'] or '-'}), next {'paused' if s['paused'] else s['next_fire']}")
        bad = s["overdue_s"] > OVERDUE_S
        out.append(_check(f"schedule {name}", "warn" if bad else "ok",
                          detail + (f", {s['overdue_s']:.0f}s overdue" if bad else ""),
                          "start beat (abstractruntime beat) and a worker on the maintenance queue" if bad else ""))
    return out
