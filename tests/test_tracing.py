"""OpenTelemetry traces (issue 16, part 1) from a producer process and real worker processes,
collected by an OTLP/HTTP receiver on loopback that decodes them with ``opentelemetry-proto``:

a run with five ticks, an LLM call to the loopback fake server and a sync child is one trace
everywhere (the fake server saw the trace id in ``traceparent``), with the right parent/child
edges; after its worker is restarted mid-run, later ticks are still in that trace; the caller of
an ``emit`` appears as a link.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from runtime import RunStatus

from support.fake_openai import FakeOpenAI
from support.processes import until

pytestmark = pytest.mark.timeout(180)

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
trace_service = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")

TESTS_DIR = Path(__file__).resolve().parent


class _Receiver(BaseHTTPRequestHandler):
    spans: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = trace_service.ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource in request.resource_spans:
            service = next((a.value.string_value for a in resource.resource.attributes if a.key == "service.name"), "")
            for scope in resource.scope_spans:
                for s in scope.spans:
                    attrs = {a.key: (a.value.string_value or a.value.int_value) for a in s.attributes}
                    type(self).spans.append({
                        "name": s.name, "trace": s.trace_id.hex(), "id": s.span_id.hex(),
                        "parent": s.parent_span_id.hex(), "attrs": attrs, "service": service,
                        "links": [(link.trace_id.hex(), link.span_id.hex()) for link in s.links]})
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


_PRODUCER = r"""
import json, sys
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from workers import tracing
from workers.client import Client
# the application's own OpenTelemetry setup: our spans in this process go through it
provider = TracerProvider(resource=Resource.create({"service.name": "test-producer"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("test")
action = sys.argv[1]
with tracer.start_as_current_span("test." + action) as span:
    client = Client()
    if action == "start":
        out = client.start("traced")
    else:
        out = client.emit(sys.argv[2], {"go": True})
    ctx = span.get_span_context()
assert tracing.mode() == "sdk"
print(json.dumps({"out": out, "trace": format(ctx.trace_id, "032x"), "span": format(ctx.span_id, "016x")}))
"""


def producer(group: Any, env: dict[str, str], *args: str) -> dict[str, Any]:
    import json

    full = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_")}
    full.update(group.env)
    full.update(env)
    full["PYTHONPATH"] = str(TESTS_DIR)
    proc = subprocess.run([sys.executable, "-c", _PRODUCER, *args], env=full, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_one_trace_per_run_across_workers_llm_and_child(fresh):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.spans = []
    fake = FakeOpenAI()
    fake.__enter__()
    try:
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
                "OTEL_BSP_SCHEDULE_DELAY": "100", "TRACE_TEST_LLM_URL": fake.base_url}
        g = fresh(imports="support.trace_scenarios")
        g.env.update(otel)
        g.start_worker("w1")
        g.start_beat()
        client = g.client()
        started = producer(g, otel, "start")
        run_id, trace_id, request_span = started["out"], started["trace"], started["span"]
        # (it waits on its child first, then for its event)
        assert until(lambda: _waits_for_event(client, run_id), timeout=30), client.get_state(run_id)
        state = client.get_state(run_id)
        child_id = state.vars["kid"]["sub_run_id"]
        # the worker is restarted while the run waits: the next ticks load the trace from the run
        assert until(lambda: any(s["name"] == "abstractruntime.effect" for s in _Receiver.spans), timeout=10), [
            (s["name"], s["service"]) for s in _Receiver.spans]
        g.kill("w1")
        g.env["ABSTRACTRUNTIME_LOG_FORMAT"] = "json"  # (w2's lines say their trace and span)
        g.start_worker("w2")
        emitted = producer(g, otel, "emit", f"trace:{run_id}")
        assert emitted["out"] == [run_id]
        assert client.wait_for(run_id, ["completed", "failed"], timeout=30).status == RunStatus.COMPLETED
        assert until(lambda: any(s["name"] == "abstractruntime.tick" and
                                 s["attrs"].get("abstractruntime.node") == "done" for s in _Receiver.spans), timeout=20)
        spans = list(_Receiver.spans)
        # (commit spans belong to whoever commits: the emit's caller commits under its own span)
        ours = [s for s in spans if s["attrs"].get("abstractruntime.run_id") in (run_id, child_id)
                and s["name"] != "abstractruntime.commit"]
        by_id = {s["id"]: s for s in spans}
        # One trace everywhere: the producer's, the workers' (both of them), the child's
        assert ours and {s["trace"] for s in ours} == {trace_id}
        assert {s["service"] for s in ours} == {"abstractruntime"} and len(ours) >= 10, [
            (s["name"], s["service"], s["attrs"].get("abstractruntime.node")) for s in spans]
        ticks = [s for s in ours if s["name"] == "abstractruntime.tick" and
                 s["attrs"]["abstractruntime.run_id"] == run_id]
        assert [s["attrs"]["abstractruntime.node"] for s in ticks][:3] == ["n1", "n2", "n3"] and len(ticks) >= 5
        # the run's ticks and effects are children of the producer's request span
        effects = [s for s in ours if s["name"] == "abstractruntime.effect" and
                   s["attrs"]["abstractruntime.run_id"] == run_id]
        assert all(s["parent"] == request_span for s in ticks + effects)
        # the LLM call: GenAI attributes, and the fake server got the effect span's traceparent
        [llm] = [s for s in effects if s["attrs"]["abstractruntime.effect"] == "llm_call"]
        assert llm["attrs"]["gen_ai.usage.output_tokens"] == 5
        [sent] = [r for r in fake.requests if r["path"].endswith("/chat/completions")]
        traceparent = {k.lower(): v for k, v in sent["headers"].items()}["traceparent"]
        assert traceparent.split("-")[1:3] == [trace_id, llm["id"]]
        # the child's spans hang from the parent's start_subworkflow effect span
        [start_child] = [s for s in effects if s["attrs"]["abstractruntime.effect"] == "start_subworkflow"]
        child_ticks = [s for s in ours if s["name"] == "abstractruntime.tick" and
                       s["attrs"]["abstractruntime.run_id"] == child_id]
        assert child_ticks and all(s["parent"] == start_child["id"] for s in child_ticks)
        # commits are under the tick or effect that made them
        commits = [s for s in spans if s["name"] == "abstractruntime.commit" and s["trace"] == trace_id]
        assert commits and all(by_id[c["parent"]]["name"] in ("abstractruntime.tick", "abstractruntime.effect",
                                                                 "abstractruntime.wake")
                               for c in commits if c["parent"] in by_id)
        # after the restart: the tick the emit sent links to the emit's caller
        [done] = [s for s in ticks if s["attrs"]["abstractruntime.node"] == "done"]
        assert (emitted["trace"], emitted["span"]) in done["links"]
        # and the JSON log line of that tick names its trace and span
        import json

        lines = [json.loads(x) for x in g.log("w2").splitlines() if x.startswith("{")]
        [line] = [x for x in lines if x["run_id"] == run_id and x.get("node") == "done"]
        assert (line["trace_id"], line["span_id"]) == (trace_id, done["id"])
    finally:
        fake.__exit__(None, None, None)
        server.shutdown()
        server.server_close()


def _waits_for_event(client: Any, run_id: str) -> bool:
    state = client.get_state(run_id)
    if state.status == RunStatus.FAILED:
        raise AssertionError(state.error)
    return state.status == RunStatus.WAITING and state.waiting.reason.value == "event"


def test_traces_off_leave_no_trace_in_the_run(fresh):
    g = fresh(imports="support.celery_scenarios")
    g.start_worker("w1")
    client = g.client()
    run_id = client.start("chain")
    state = client.wait_for(run_id, ["completed"], timeout=30)
    assert "_trace" not in state.vars  # no endpoint: no context kept, nothing exported
