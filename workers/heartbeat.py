"""Who is alive: each worker process and beat write a heartbeat to Redis every few seconds.

A daemon thread per process writes ``{kind, hostname, pid, queues}`` (``RedisBackend.write_heartbeat``:
the heartbeats sorted set and one expiring details key, ``docs/redis-layout.md``). A thread, not a
task or a Celery timer: it beats while a solo worker runs a long task, and in a prefork worker it
runs in the main process, which consumes the queues (``worker_ready`` fires there after the fork).
``explain`` and ``doctor`` read the heartbeats to know which queues have a live consumer.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

__all__ = ["Heartbeat", "connect", "HEARTBEAT_PERIOD_S", "ALIVE_WITHIN_S"]

logger = logging.getLogger(__name__)

#: Seconds between two heartbeats of a process.
HEARTBEAT_PERIOD_S = 5.0
#: Seconds since its last heartbeat after which a process is taken for gone.
ALIVE_WITHIN_S = 3 * HEARTBEAT_PERIOD_S
#: Milliseconds a heartbeat's details live after being written.
DETAILS_TTL_MS = int(2 * ALIVE_WITHIN_S * 1000)

_running: list[Heartbeat] = []
_lock = threading.Lock()


class Heartbeat:
    """A daemon thread writing one process's heartbeat every ``period_s`` until :meth:`stop`."""

    def __init__(self, settings: Any, kind: str, hostname: str, queues: list[str], *,
                 period_s: float = HEARTBEAT_PERIOD_S) -> None:
        self.settings, self.period_s = settings, period_s
        self.process_id = f"{kind}:{hostname}:{os.getpid()}"
        self.details = {"kind": kind, "hostname": hostname, "pid": os.getpid(), "queues": sorted(queues)}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"abstractruntime-heartbeat-{kind}", daemon=True)
        self._backend: Any = None

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _beat(self) -> None:
        if self._backend is None:
            from stores.redis import RedisBackend

            self._backend = RedisBackend.from_settings(self.settings.redis)
        self._backend.write_heartbeat(self.process_id, self.details, ttl_ms=DETAILS_TTL_MS)

    def _loop(self) -> None:
        failing = False
        while True:
            try:
                self._beat()
                failing = False
            except Exception as exc:  # Redis away for a while: say so once, keep trying
                if not failing:
                    logger.warning("heartbeat of %s not written: %s: %s", self.process_id, type(exc).__name__, exc)
                failing = True
            if self._stop.wait(self.period_s):
                return

    def stop(self) -> None:
        """Stop beating and remove this process from the heartbeats (a clean shutdown)."""
        self._stop.set()
        self._thread.join(timeout=2)
        try:
            if self._backend is not None:
                self._backend.drop_heartbeat(self.process_id)
                self._backend.close()
        except Exception:  # best effort: the entry expires anyway
            pass


def _settings_of(app: Any) -> Any:
    holder = getattr(app, "abstractruntime", None)
    return getattr(holder, "settings", None)


def _start(settings: Any, kind: str, hostname: str, queues: list[str]) -> None:
    with _lock:
        _running.append(Heartbeat(settings, kind, hostname, queues).start())


def _on_worker_ready(sender: Any = None, **_kwargs: Any) -> None:
    app: Any = getattr(sender, "app", None)
    settings = _settings_of(app)
    if settings is None:
        return
    queues = list(getattr(app.amqp.queues, "consume_from", None) or app.amqp.queues)
    _start(settings, "worker", str(getattr(sender, "hostname", None) or socket.gethostname()), queues)


def _on_beat_init(sender: Any = None, **_kwargs: Any) -> None:
    settings = _settings_of(getattr(sender, "app", None))
    if settings is not None:
        _start(settings, "beat", socket.gethostname(), [])


def _on_shutdown(**_kwargs: Any) -> None:
    with _lock:
        beats = list(_running)
        _running.clear()
    for beat in beats:
        beat.stop()


def connect() -> None:
    """Start the heartbeat in each worker (``worker_ready``) and in beat (``beat_init``)."""
    from celery import signals

    signals.worker_ready.connect(_on_worker_ready, weak=False, dispatch_uid="abstractruntime.heartbeat.worker")
    signals.beat_init.connect(_on_beat_init, weak=False, dispatch_uid="abstractruntime.heartbeat.beat")
    signals.worker_shutdown.connect(_on_shutdown, weak=False, dispatch_uid="abstractruntime.heartbeat.shutdown")
