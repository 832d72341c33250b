"""A lean span recorder and OTLP/HTTP exporter for the workers' own spans (``docs/tracing.md``).

Why not the OpenTelemetry SDK for these: measured on this 2-core machine, an SDK span costs
about 45 µs to make and as much again to encode in the batch thread (which competes with the
tick for the interpreter), so a tick span and a commit span cost about a quarter of the cheapest
tick. The spans here are tuples until they are exported, and their OTLP protobuf is written
by hand with the encoded attributes cached (a run's id, its workflow and node repeat from one
tick to the next): a few microseconds each.

They follow the OTLP exporter's environment: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (used as
is) or ``OTEL_EXPORTER_OTLP_ENDPOINT`` (+ ``/v1/traces``), ``..._HEADERS``, ``..._TIMEOUT``
(milliseconds, default 10,000), ``..._COMPRESSION`` (``gzip`` or none), ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_BSP_SCHEDULE_DELAY`` (ms, 5,000),
``OTEL_BSP_MAX_QUEUE_SIZE`` (2,048) and ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` (512).

A span is never waited for: when the queue is full, or a batch cannot be sent (no collector,
an error status, a timeout), its spans are dropped and counted (:func:`dropped`, the
``abstractruntime_trace_spans_dropped_total`` metric) and the first drop of each kind is logged.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import os
import random
import socket
import struct
import threading
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["Exporter", "encode_request", "parse_traceparent", "new_span_id", "new_trace_id"]

logger = logging.getLogger(__name__)

_PACK_D = struct.Struct("<d").pack

# A span waiting for export: (trace_id, span_id, parent_id, name, kind, start_ns, end_ns,
# attributes, links, error). Ids are bytes; links are (trace_id, span_id) pairs; error is the
# status message of a span that ended by an exception, else None.
SpanRecord = tuple[bytes, bytes, bytes, str, int, int, int, dict[str, Any], list[tuple[bytes, bytes]], "str | None"]

KIND_INTERNAL = 1


def new_span_id() -> bytes:
    """A random span id, never all zeros (W3C: an invalid id)."""
    return (random.getrandbits(64) or 1).to_bytes(8, "big")


def new_trace_id() -> bytes:
    """A random trace id, never all zeros."""
    return (random.getrandbits(128) or 1).to_bytes(16, "big")


_HEX = frozenset("0123456789abcdef")


def parse_traceparent(value: Any) -> tuple[bytes, bytes, int] | None:
    """``00-<trace id>-<span id>-<flags>`` as (trace id, span id, flags); None when malformed
    (wrong length or version, not lower-case hex, an all-zero id)."""
    if not isinstance(value, str) or len(value) < 55:
        return None
    parts = value.split("-")
    if len(parts) < 4 or parts[0] == "ff" or len(parts[0]) != 2 or (parts[0] == "00" and len(parts) != 4):
        return None
    version, trace_hex, span_hex, flags_hex = parts[:4]
    if (len(trace_hex), len(span_hex), len(flags_hex)) != (32, 16, 2) or not _HEX.issuperset(
            version + trace_hex + span_hex + flags_hex):
        return None
    trace_id, span_id = bytes.fromhex(trace_hex), bytes.fromhex(span_hex)
    if not any(trace_id) or not any(span_id):
        return None
    return trace_id, span_id, int(flags_hex, 16)


# -- protobuf, by hand (opentelemetry/proto/trace/v1/trace.proto; checked by decoding in tests) ------------------

def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_TAGS = {n: _varint(n << 3 | 2) for n in range(1, 16)}


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (bytes, string or message)."""
    n = len(payload)
    return _TAGS[number] + (bytes((n,)) if n < 0x80 else _varint(n)) + payload


def _any_value(value: Any) -> bytes:
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")          # bool_value = 2
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)       # int_value = 3 (int64)
    if isinstance(value, float):
        return b"\x21" + _PACK_D(value)                           # double_value = 4
    return _field(1, str(value).encode())                         # string_value = 1


def _key_value(key: str, value: Any) -> bytes:
    return _field(1, key.encode()) + _field(2, _any_value(value))


_ATTR_CACHE: dict[tuple[str, type, Any], bytes] = {}
_ATTR_CACHE_MAX = 4096


def _attribute(key: str, value: Any) -> bytes:
    """A span's attribute field, cached: a run's id, workflow and node come back tick after tick."""
    ck = (key, type(value), value)
    got = _ATTR_CACHE.get(ck)
    if got is None:
        got = _field(9, _key_value(key, value))
        if len(_ATTR_CACHE) >= _ATTR_CACHE_MAX:
            _ATTR_CACHE.clear()
        _ATTR_CACHE[ck] = got
    return got


_LINK_ATTR = _field(4, _key_value("abstractruntime.link", "delivery"))


_TIMES = struct.Struct("<BQBQ").pack  # start_time_unix_nano = 7, end_time_unix_nano = 8 (fixed64)
_NAMES: dict[tuple[str, int], bytes] = {}


def _span(rec: SpanRecord) -> bytes:
    trace_id, span_id, parent_id, name, kind, start, end, attrs, links, error = rec
    head = _NAMES.get((name, kind))
    if head is None:  # name = 5, kind = 6
        head = _NAMES[(name, kind)] = _field(5, name.encode()) + b"\x30" + _varint(kind)
    parts = [b"\x0a\x10", trace_id, b"\x12\x08", span_id,     # trace_id = 1, span_id = 2
             b"\x22\x08" + parent_id if parent_id else b"",      # parent_span_id = 4
             head, _TIMES(0x39, start, 0x41, end)]
    cache = _ATTR_CACHE
    for k, v in attrs.items():                                     # attributes = 9
        if v is not None:
            parts.append(cache.get((k, type(v), v)) or _attribute(k, v))
    for link_trace, link_span in links:                            # links = 13
        parts.append(_field(13, b"\x0a\x10" + link_trace + b"\x12\x08" + link_span + _LINK_ATTR))
    if error is not None:                                          # status = 15: message 2, code 3 (error = 2)
        parts.append(_field(15, _field(2, error.encode()) + b"\x18\x02"))
    return _field(2, b"".join(parts))                              # ScopeSpans.spans = 2


def encode_request(spans: list[SpanRecord], resource: dict[str, Any], scope: str = "abstractruntime") -> bytes:
    """An ``ExportTraceServiceRequest`` with one resource and one scope."""
    res = b"".join(_field(1, _key_value(k, v)) for k, v in resource.items())   # Resource.attributes = 1
    scope_spans = _field(1, _field(1, scope.encode())) + b"".join(_span(s) for s in spans)
    return _field(1, _field(1, res) + _field(2, scope_spans))     # resource_spans = 1: resource 1, scope_spans 2


# -- configuration ------------------------------------------------------------------------------------------------

def _env(name: str, default: str = "") -> str:
    return os.environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or os.environ.get(f"OTEL_EXPORTER_OTLP_{name}") \
        or default


def endpoint_from_env() -> str:
    url = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if url:
        return url
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    return base.rstrip("/") + "/v1/traces" if base else ""


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw.strip() else default
    except ValueError:
        logger.warning("%s=%r is not a number; using %s", name, raw, default)
        return default


def _headers_from_env() -> dict[str, str]:
    out: dict[str, str] = {}
    for item in _env("HEADERS").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            out[unquote(key.strip())] = unquote(value.strip())
    return out


def resource_from_env(service: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for item in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            attrs[unquote(key.strip())] = unquote(value.strip())
    attrs["service.name"] = os.environ.get("OTEL_SERVICE_NAME") or attrs.get("service.name") or service
    attrs.setdefault("host.name", socket.gethostname())
    attrs.update({"process.pid": os.getpid(), "telemetry.sdk.language": "python",
                  "telemetry.sdk.name": "abstractruntime"})
    return attrs


# -- the batch exporter -------------------------------------------------------------------------------------------

class Exporter:
    """Spans queue here and a daemon thread posts them in batches; one per process."""

    def __init__(self, endpoint: str, resource: dict[str, Any]) -> None:
        self.url = urlsplit(endpoint)
        if self.url.scheme not in ("http", "https") or not self.url.hostname:
            raise ValueError(f"OTLP traces endpoint {endpoint!r}: not an http(s) URL")
        self.resource = resource
        self.headers = {"Content-Type": "application/x-protobuf", **_headers_from_env()}
        self.gzip = _env("COMPRESSION").strip().lower() == "gzip"
        if self.gzip:
            self.headers["Content-Encoding"] = "gzip"
        self.timeout = max(0.1, _int_env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT" if os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") else "OTEL_EXPORTER_OTLP_TIMEOUT", 10_000) / 1000)
        self.delay = max(0.001, _int_env("OTEL_BSP_SCHEDULE_DELAY", 5_000) / 1000)
        self.max_queue = max(1, _int_env("OTEL_BSP_MAX_QUEUE_SIZE", 2_048))
        self.batch = max(1, min(self.max_queue, _int_env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)))
        self._queue: list[SpanRecord] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._conn: http.client.HTTPConnection | None = None
        self.exported = 0
        self.dropped: dict[str, int] = {}
        self._warned: set[str] = set()
        self._thread = threading.Thread(target=self._loop, name="abstractruntime-otlp", daemon=True)
        self._thread.start()

    def add(self, rec: SpanRecord) -> None:
        """Queue a finished span (never blocks: a full queue drops it, counted)."""
        with self._lock:
            queue = self._queue
            full = len(queue) >= self.max_queue
            if not full:
                queue.append(rec)
        if full:
            self._drop("queue_full", 1, f"the span queue is full ({self.max_queue}, OTEL_BSP_MAX_QUEUE_SIZE)")
        elif len(queue) >= self.batch:
            self._wake.set()

    def flush(self, timeout: float = 5.0) -> bool:
        """Send what is queued now; True when done within ``timeout`` seconds."""
        self._idle.clear()
        self._wake.set()
        return self._idle.wait(timeout)

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.delay)
            self._wake.clear()
            with self._lock:
                spans, self._queue = self._queue, []
            for i in range(0, len(spans), self.batch):
                self._send(spans[i:i + self.batch])
            if not self._queue:
                self._idle.set()

    def _send(self, spans: list[SpanRecord]) -> None:
        try:
            body = encode_request(spans, self.resource)
            if self.gzip:
                body = gzip.compress(body, compresslevel=5)
            status = self._post(body)
        except Exception as exc:  # no collector, a reset connection, a timeout: drop and count
            self._close()
            self._drop("export_failed", len(spans), f"spans could not be sent to {self.url.geturl()}: {exc}")
            return
        if 200 <= status < 300:
            self.exported += len(spans)
        else:
            self._drop("export_failed", len(spans), f"the collector at {self.url.geturl()} answered {status}")

    def _post(self, body: bytes) -> int:
        for again in (True, False):  # a kept-alive connection the collector closed: open one more
            conn = self._conn
            if conn is None:
                cls = http.client.HTTPSConnection if self.url.scheme == "https" else http.client.HTTPConnection
                conn = self._conn = cls(self.url.hostname or "", self.url.port, timeout=self.timeout)
            try:
                conn.request("POST", self.url.path or "/v1/traces", body=body, headers=self.headers)
                response = conn.getresponse()
                response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self._close()
                return response.status
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._close()
                if not again:
                    raise
        raise AssertionError("unreachable")

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _drop(self, reason: str, count: int, why: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count
        from . import metrics

        metrics.spans_dropped(reason, count)
        if reason not in self._warned:
            self._warned.add(reason)
            logger.warning("traces: %s; %d span(s) dropped (counted in abstractruntime_trace_spans_dropped_total, "
                           "logged once)", why, count)
