"""SLA webhooks: the alert as JSON, signed with HMAC-SHA256, posted off the sweep's thread.

The sweep decides an alert once (``sla:alerts``) and schedules it (``sla:outbox``); each sweep
claims the due alerts and hands the webhooks to :class:`Deliveries`, a few threads of the
worker process, so that a slow or dead receiver never holds the sweep up. A delivery that
fails (a timeout, a refused connection, a status other than 2xx) is due again after a backoff
(1 s, 2 s, 4 s... at most :data:`MAX_BACKOFF_S`) until ``WorkerSettings.sla_webhook_attempts``;
a process that dies while posting leaves the alert claimed, and a later sweep posts it again
once the claim's hold is over. The receiver may thus see an alert twice in rare cases: the
``X-AbstractRuntime-Alert-Id`` header (``<run_id> <rule>``, one per run and rule) tells.

The signature is ``X-AbstractRuntime-Signature: sha256=<hex>``, the HMAC-SHA256 of the raw
body with ``WorkerSettings.sla_webhook_secret``; without a secret no webhook is sent (the
alert is marked failed and an error logged)::

    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    hmac.compare_digest(expected, request.headers["X-AbstractRuntime-Signature"])
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

__all__ = ["sign", "body_of", "post", "Deliveries", "deliveries", "SIGNATURE_HEADER", "ALERT_ID_HEADER",
           "MAX_BACKOFF_S", "backoff_ms"]

logger = logging.getLogger(__name__)

#: The header carrying ``sha256=<hex>``, the HMAC-SHA256 of the body.
SIGNATURE_HEADER = "X-AbstractRuntime-Signature"
#: The header naming the alert (``<run_id> <rule>``): the same on every attempt.
ALERT_ID_HEADER = "X-AbstractRuntime-Alert-Id"
#: The header giving the attempt number, from 1.
ATTEMPT_HEADER = "X-AbstractRuntime-Attempt"
#: Longest wait between two attempts of a webhook, in seconds.
MAX_BACKOFF_S = 300.0
#: Threads posting webhooks in one worker process.
THREADS = 4
#: Webhooks one process holds at most (posting or queued for a thread).
MAX_IN_FLIGHT = 4 * THREADS
#: The alert's fields that stay out of the body (delivery bookkeeping).
_PRIVATE = frozenset({"state", "attempts", "last_error", "url", "done_at", "outcome"})


def sign(secret: str | bytes, body: bytes) -> str:
    """``sha256=<hex>``: the HMAC-SHA256 of ``body`` with ``secret``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def body_of(alert: Mapping[str, Any]) -> bytes:
    """The JSON the receiver gets: the alert without its delivery bookkeeping; the same bytes on
    every attempt. Its ``type`` is ``sla.breached``, or the named wait's event (``wait.reminder``...)."""
    public = {k: v for k, v in alert.items() if k not in _PRIVATE}
    return json.dumps({"type": "sla.breached", **public}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, default=str).encode()


def post(url: str, body: bytes, *, secret: str, alert_id: str, attempt: int, timeout_s: float) -> int:
    """POST ``body`` to ``url``, signed; returns the status. Raises on a status other than 2xx,
    a timeout or a connection that fails."""
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "abstractruntime-sla",
        SIGNATURE_HEADER: sign(secret, body), ALERT_ID_HEADER: alert_id, ATTEMPT_HEADER: str(attempt)})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 (http(s) checked by SlaRule)
        status = int(response.status)
    if not 200 <= status < 300:
        raise urllib.error.HTTPError(url, status, "not a 2xx status", {}, None)  # type: ignore[arg-type]
    return status


def backoff_ms(attempt: int) -> int:
    """Milliseconds before the attempt after ``attempt`` (1 s, doubled each time, capped)."""
    return int(min(MAX_BACKOFF_S, 2.0 ** max(0, attempt - 1)) * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat()


class Deliveries:
    """The threads of one process that post webhooks, and the alerts they hold."""

    def __init__(self, threads: int = THREADS, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sla-webhook")
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self.max_in_flight = max_in_flight

    def room(self) -> int:
        """How many more webhooks this process takes now."""
        with self._lock:
            return max(0, self.max_in_flight - len(self._held))

    def submit(self, backend: Any, settings: Any, alert_id: str, alert: dict[str, Any]) -> bool:
        """Post ``alert`` on a thread (False: this process holds it already)."""
        with self._lock:
            if alert_id in self._held:
                return False
            self._held.add(alert_id)
        self._pool.submit(self._deliver, backend, settings, alert_id, alert)
        return True

    def _deliver(self, backend: Any, settings: Any, alert_id: str, alert: dict[str, Any]) -> None:
        try:
            deliver(backend, settings, alert_id, alert)
        except Exception:  # a bug here must not kill the thread pool
            logger.exception("SLA webhook %s: delivery failed unexpectedly", alert_id)
        finally:
            with self._lock:
                self._held.discard(alert_id)

    def wait(self, timeout_s: float = 10.0) -> bool:
        """Wait until nothing is held (tests); False on timeout."""
        import time

        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if not self._held:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def deliver(backend: Any, settings: Any, alert_id: str, alert: dict[str, Any]) -> bool:
    """One attempt at posting ``alert``, then its new state in Redis: done, due again after a
    backoff, or failed for good after the last attempt. True when delivered."""
    attempt = int(alert.get("attempts") or 0) + 1
    alert = {**alert, "attempts": attempt}
    secret = settings.sla_webhook_secret
    try:
        if not secret:
            raise ValueError("no secret to sign it with: set ABSTRACTRUNTIME_SLA_WEBHOOK_SECRET")
        status = post(str(alert["url"]), body_of(alert), secret=secret, alert_id=alert_id, attempt=attempt,
                      timeout_s=settings.sla_webhook_timeout_s)
    except Exception as exc:
        alert["last_error"] = f"{type(exc).__name__}: {exc}"[:500]
        final = attempt >= settings.sla_webhook_attempts or not secret
        if final:
            alert["state"] = "failed"
            logger.error("SLA webhook %s to %s failed for good after %d attempt(s): %s", alert_id,
                         _host(alert.get("url")), attempt, alert["last_error"])
            if alert.get("rule") == "waits":
                backend.drop_alerts([alert_id])
            else:
                backend.update_alert(alert_id, alert)
        else:
            logger.warning("SLA webhook %s attempt %d failed (%s); retried in %.0f s", alert_id, attempt,
                           alert["last_error"], backoff_ms(attempt) / 1000)
            backend.update_alert(alert_id, alert, retry_at_ms=backend.time_ms() + backoff_ms(attempt))
        return False
    alert.update(state="done", outcome=f"HTTP {status}", done_at=_iso(backend.time_ms()))
    if alert.get("rule") == "waits":  # a named wait's event: nothing to keep once delivered
        backend.drop_alerts([alert_id])
    else:
        backend.update_alert(alert_id, alert)
    logger.info("SLA webhook %s delivered to %s (HTTP %d, attempt %d)", alert_id, _host(alert.get("url")), status,
                attempt)
    return True


def _host(url: Any) -> str:
    """The receiver's host, for logs (never the path or query, which may hold a token)."""
    from urllib.parse import urlsplit

    try:
        return urlsplit(str(url)).hostname or "?"
    except ValueError:
        return "?"


_deliveries: Deliveries | None = None
_deliveries_pid = 0
_deliveries_lock = threading.Lock()


def deliveries() -> Deliveries:
    """This process's :class:`Deliveries` (a new one after a fork: threads do not cross it)."""
    global _deliveries, _deliveries_pid
    with _deliveries_lock:
        if _deliveries is None or _deliveries_pid != os.getpid():
            _deliveries, _deliveries_pid = Deliveries(), os.getpid()
        return _deliveries
