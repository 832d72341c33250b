"""Lean spans and their OTLP/HTTP exporter (``workers/otlp.py``, issue 16's bad input): what
they send decodes with ``opentelemetry-proto``; a collector that is down, hangs or refuses costs
spans, counted and logged once, never a tick; a malformed ``traceparent`` stored in a run starts
a new trace, which the run keeps.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from runtime.models import StepPlan
from runtime.spec import WorkflowSpec
from workers import otlp, tracing
from workers.registry import Registry
from workers.settings import WorkerSettings
from workers.testing import make_stub_engine

pytestmark = pytest.mark.timeout(120)

trace_service = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")


def decode(body: bytes) -> Any:
    request = trace_service.ExportTraceServiceRequest()
    request.ParseFromString(body)
    return request


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value"))


def test_the_encoding_is_what_opentelemetry_proto_reads():
    tid, sid, parent, link_t, link_s = (otlp.new_trace_id(), otlp.new_span_id(), otlp.new_span_id(),
                                        otlp.new_trace_id(), otlp.new_span_id())
    attrs = {"s": "é" * 100, "i": 12, "neg": -3, "big": 2**62, "b": True, "f": 0.25, "none": None}
    spans = [(tid, sid, parent, "abstractruntime.tick", otlp.KIND_INTERNAL, 1_700_000_000_000_000_001,
              1_700_000_000_500_000_000, attrs, [(link_t, link_s)], "ValueError: bad"),
             (tid, otlp.new_span_id(), b"", "root", otlp.KIND_INTERNAL, 1, 2, {}, [], None)]
    req = decode(otlp.encode_request(spans, {"service.name": "svc", "process.pid": 7}))
    [rs] = req.resource_spans
    assert {a.key: _value(a.value) for a in rs.resource.attributes} == {"service.name": "svc", "process.pid": 7}
    [ss] = rs.scope_spans
    assert ss.scope.name == "abstractruntime"
    first, second = ss.spans
    assert (first.trace_id, first.span_id, first.parent_span_id) == (tid, sid, parent)
    assert (first.name, first.kind) == ("abstractruntime.tick", 1)
    assert (first.start_time_unix_nano, first.end_time_unix_nano) == (1_700_000_000_000_000_001,
                                                                      1_700_000_000_500_000_000)
    assert {a.key: _value(a.value) for a in first.attributes} == {"s": "é" * 100, "i": 12, "neg": -3,
                                                                  "big": 2**62, "b": True, "f": 0.25}
    [link] = first.links
    assert (link.trace_id, link.span_id) == (link_t, link_s)
    assert (first.status.code, first.status.message) == (2, "ValueError: bad")
    assert second.parent_span_id == b"" and second.name == "root" and second.status.code == 0


@pytest.mark.parametrize("value", [
    "", "garbage", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",       # missing flags
    "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",                    # upper case
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",                    # zero trace id
    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",                    # zero span id
    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",                    # version ff
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",              # version 00 has 4 parts
    "00-0af7651916cd43dd8448eb211c80319z-b7ad6b7169203331-01", 42, None])
def test_malformed_traceparents_are_refused(value):
    assert otlp.parse_traceparent(value) is None


def test_a_traceparent_parses():
    assert otlp.parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01") == (
        bytes.fromhex("0af7651916cd43dd8448eb211c80319c"), bytes.fromhex("b7ad6b7169203331"), 1)


class _Receiver(BaseHTTPRequestHandler):
    spans: list[Any] = []
    hang = threading.Event()
    posting = threading.Event()
    status = 200

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).posting.set()
        if type(self).hang.is_set():
            time.sleep(3)
        for rs in decode(body).resource_spans:
            for ss in rs.scope_spans:
                type(self).spans.extend(ss.spans)
        self.send_response(type(self).status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver():
    # a class per test: a post a former test's collector still holds lands in that test's list
    handler = type("Receiver", (_Receiver,), {"spans": [], "hang": threading.Event(), "posting": threading.Event(),
                                              "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.h = handler  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def traces_to(monkeypatch):
    """Turn lean traces on in this process, towards the given endpoint."""
    def on(endpoint: str, **env: str) -> None:
        for k in [k for k in os.environ if k.startswith("OTEL_")]:
            monkeypatch.delenv(k)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        monkeypatch.setenv("ABSTRACTRUNTIME_TRACES", "lean")
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        tracing.reset()
        assert tracing.mode() == "lean"
    yield on
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    tracing.reset()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _chain(n: int) -> tuple[Registry, WorkflowSpec]:
    def node(i: int) -> Any:
        def run(r: Any, ctx: Any) -> StepPlan:
            if i == n - 1:
                return StepPlan(node_id=f"n{i}", complete_output={"done": True})
            return StepPlan(node_id=f"n{i}", next_node=f"n{i + 1}")
        return run

    reg = Registry()
    spec = reg.register_workflow(WorkflowSpec(workflow_id=f"chain{n}", entry_node="n0",
                                              nodes={f"n{i}": node(i) for i in range(n)}))
    return reg, spec


def test_a_collector_that_is_down_costs_spans_counted_and_logged_once_never_a_tick(store, traces_to, caplog):
    traces_to(f"http://127.0.0.1:{_closed_port()}", OTEL_BSP_SCHEDULE_DELAY="50")
    reg, spec = _chain(12)
    engine, stub = make_stub_engine(store, reg, WorkerSettings())
    with caplog.at_level(logging.WARNING, logger="workers.otlp"):
        for _ in range(3):
            run_id = engine.create(spec)
            stub.run_until_quiet(engine)
            assert engine.backend.load_versioned(run_id)[0].status.value == "completed"
            tracing.flush(5)
    dropped = tracing.dropped()
    # a tick span and a commit span per tick, and the producer's start and commit spans: all dropped
    assert dropped.get("export_failed", 0) >= 3 * 12 * 2, dropped
    warnings = [r for r in caplog.records if "could not be sent" in r.getMessage()]
    assert len(warnings) == 1 and "logged once" in warnings[0].getMessage()


def test_a_hanging_collector_does_not_hold_ticks(store, traces_to, receiver):
    traces_to(f"http://127.0.0.1:{receiver.server_port}", OTEL_BSP_SCHEDULE_DELAY="10",
              OTEL_EXPORTER_OTLP_TIMEOUT="300", OTEL_BSP_MAX_QUEUE_SIZE="50")
    receiver.h.hang.set()  # every post waits 3 s: longer than the exporter's 300 ms timeout
    reg, spec = _chain(40)
    engine, stub = make_stub_engine(store, reg, WorkerSettings())
    run_id = engine.create(spec)
    stub.run_until_quiet(engine)
    # the run finished while the collector hung: its spans were dropped, counted by reason
    assert engine.backend.load_versioned(run_id)[0].status.value == "completed"
    tracing.flush(5)
    dropped = tracing.dropped()
    assert dropped.get("export_failed", 0) + dropped.get("queue_full", 0) >= 40, dropped


def test_an_error_status_is_counted(store, traces_to, receiver):
    traces_to(f"http://127.0.0.1:{receiver.server_port}", OTEL_BSP_SCHEDULE_DELAY="10")
    receiver.h.status = 503
    reg, spec = _chain(3)
    engine, stub = make_stub_engine(store, reg, WorkerSettings())
    engine.create(spec)
    stub.run_until_quiet(engine)
    assert tracing.flush(5)
    assert tracing.dropped().get("export_failed", 0) >= 6


def test_a_full_queue_drops_the_newest_spans(traces_to, receiver):
    traces_to(f"http://127.0.0.1:{receiver.server_port}", OTEL_BSP_SCHEDULE_DELAY="600000",
              OTEL_BSP_MAX_QUEUE_SIZE="5")
    receiver.h.hang.set()  # the first batch stays in flight for 3 s while the queue fills again

    class Run:
        run_id, workflow_id, current_node = "r-1", "wf", "n"
        vars = {"_trace": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}

    def spans(numbers: range) -> None:
        for i in numbers:
            with tracing.run_span("abstractruntime.tick", Run(), version=i):
                pass

    spans(range(5))  # a full batch: sent at once
    assert receiver.h.posting.wait(10)
    spans(range(5, 13))
    assert tracing.dropped() == {"queue_full": 3}
    assert tracing.flush(10)
    assert [s.attributes[3].value.int_value for s in receiver.h.spans] == list(range(10))


def test_a_malformed_stored_traceparent_starts_a_new_trace_the_run_keeps(store, traces_to, receiver, caplog):
    reg, spec = _chain(5)
    engine, stub = make_stub_engine(store, reg, WorkerSettings())
    bad = "00-not-a-trace-context"
    tracing.reset()  # (traces off at the start: the producer keeps the value it was given)
    run_id = engine.create(spec, vars={"_trace": {"traceparent": bad}})
    traces_to(f"http://127.0.0.1:{receiver.server_port}", OTEL_BSP_SCHEDULE_DELAY="10")
    with caplog.at_level(logging.WARNING, logger="workers.tracing"):
        stub.run_until_quiet(engine)
    state = engine.backend.load_versioned(run_id)[0]
    assert state.status.value == "completed"
    assert tracing.flush(5)
    ticks = [s for s in receiver.h.spans if s.name == "abstractruntime.tick"]
    assert [next(a.value.string_value for a in s.attributes if a.key == "abstractruntime.node")
            for s in ticks] == ["n0", "n1", "n2", "n3", "n4"]
    # one new trace: the first tick is its root, the next ones hang under the context the run kept
    assert len({s.trace_id for s in ticks}) == 1 and ticks[0].parent_span_id == b""
    kept = otlp.parse_traceparent(state.vars["_trace"]["traceparent"])
    assert kept is not None and kept[:2] == (ticks[0].trace_id, ticks[0].span_id)
    assert all(s.parent_span_id == ticks[0].span_id for s in ticks[1:])
    assert len([r for r in caplog.records if "malformed" in r.getMessage()]) <= 1  # (once per process)


_DROPPED_METRIC = r"""
import os, socket, sys
sys.path[:0] = {paths!r}
from workers import tracing
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

class Run:
    run_id, workflow_id, current_node = "r-1", "wf", "n"
    vars = {{"_trace": {{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}}}

for i in range(7):
    with tracing.run_span("abstractruntime.tick", Run()):
        pass
assert tracing.flush(5)
registry = CollectorRegistry()
MultiProcessCollector(registry, os.environ["PROMETHEUS_MULTIPROC_DIR"])
print(registry.get_sample_value("abstractruntime_trace_spans_dropped_total", {{"reason": "export_failed"}}))
"""


def test_dropped_spans_are_a_metric(tmp_path):
    pytest.importorskip("prometheus_client")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ABSTRACTRUNTIME_", "PROMETHEUS_"))}
    env.update(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", OTEL_BSP_SCHEDULE_DELAY="10",
               ABSTRACTRUNTIME_METRICS_DIR=str(tmp_path / "metrics"))
    code = _DROPPED_METRIC.format(paths=[str(Path(__file__).resolve().parents[1])])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) == 7.0
