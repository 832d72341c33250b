"""OpenTelemetry traces (``docs/tracing.md``): one trace per run, from the producer's request to
its last LLM call, days later, on any worker.

Off unless the OpenTelemetry SDK and its OTLP/HTTP exporter are installed (``.[otel]``) and
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set; off, every
function here is a no-op (the kernel never imports OpenTelemetry).

The context travels in the run, not in Celery's messages: at the start the producer's current
span context (or, with none, a new root span ``abstractruntime.start``) is kept in
``vars["_trace"]`` as W3C ``traceparent``/``tracestate``, and every tick, wake and effect span
is a child of it, whatever worker loads the run, so a tick that enqueues a tick stays in one
trace (Celery's own instrumentation starts a new trace per published task). A child run starts
inside its parent's ``start_subworkflow`` effect span and keeps that as its context. The
contexts of the callers of ``resume``, ``emit`` and ``answer`` are kept in ``vars["_trace"]
["links"]`` and become links of the next tick span. An LLM call's HTTP request carries the
effect span's ``traceparent`` (``runtime/outbound.py``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

__all__ = ["enabled", "setup", "carrier", "keep_start_context", "keep_caller_link", "run_span", "child_span",
           "TRACE_VARS"]

logger = logging.getLogger(__name__)

#: Where a run keeps its trace context: ``vars["_trace"] = {"traceparent", "tracestate", "links"}``.
TRACE_VARS = "_trace"
#: Links a run keeps for its next tick span, at most.
MAX_LINKS = 16

_state: dict[str, Any] = {"pid": 0, "tracer": None}
#: What a span hook gives with traces off (a null context can be entered again and again).
_NOTHING: AbstractContextManager[None] = nullcontext()


def enabled() -> bool:
    if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return False
    import importlib.util

    return all(importlib.util.find_spec(m) is not None
               for m in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"))


def setup(service: str = "abstractruntime") -> Any:
    """This process's tracer (made once per process; None when traces are off)."""
    pid = os.getpid()
    if _state["pid"] == pid:
        return _state["tracer"]
    _state["pid"], _state["tracer"] = pid, None
    if not enabled():
        return None
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # the application set none: ours, batched to OTLP/HTTP
        provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME",
                                                                                             service)}))
        # a collector that cannot be reached drops spans (counted by the SDK's logs), never blocks a tick
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(timeout=5)))
        trace.set_tracer_provider(provider)
    _state["tracer"] = trace.get_tracer("abstractruntime")
    return _state["tracer"]


def carrier() -> dict[str, str]:
    """The current span context as W3C headers (``traceparent``, maybe ``tracestate``); {} if none."""
    if setup() is None:
        return {}
    from opentelemetry.propagate import inject

    out: dict[str, str] = {}
    inject(out)
    return out


def _context_of(stored: Any) -> Any:
    """The OpenTelemetry context of a stored ``vars["_trace"]`` (None when absent or malformed)."""
    if not isinstance(stored, dict) or not isinstance(stored.get("traceparent"), str):
        return None
    from opentelemetry import trace
    from opentelemetry.propagate import extract

    ctx = extract({k: v for k, v in stored.items() if k in ("traceparent", "tracestate") and isinstance(v, str)})
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        _warn_once("a run's stored traceparent is malformed; its spans start a new trace")
        return None
    return ctx


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def keep_start_context(run_vars: dict[str, Any], run_id: str, workflow_id: str) -> None:
    """At a run's start: keep the caller's span context, or a new root span's, in ``run_vars``."""
    tracer = setup()
    if tracer is None:
        return
    kept = carrier()
    if not kept.get("traceparent"):
        with tracer.start_as_current_span("abstractruntime.start", attributes={
                "abstractruntime.run_id": run_id, "abstractruntime.workflow": workflow_id}):
            kept = carrier()
    if kept.get("traceparent"):
        run_vars[TRACE_VARS] = kept


def keep_caller_link(run_vars: dict[str, Any]) -> None:
    """A resume, emit or answer: keep the caller's span context as a link for the next tick span."""
    if setup() is None:
        return
    caller = carrier()
    stored = run_vars.get(TRACE_VARS)
    if not caller.get("traceparent") or not isinstance(stored, dict):
        return
    links = [x for x in stored.get("links") or [] if isinstance(x, str)][-(MAX_LINKS - 1):]
    run_vars[TRACE_VARS] = {**stored, "links": [*links, caller["traceparent"]]}


def run_span(name: str, run: Any, **attributes: Any) -> AbstractContextManager[Any]:
    """A span (``abstractruntime.tick``...) that is a child of the run's kept context, with the
    links kept since the last one (removed from the run: its next commit drops them). Traces
    off: a context manager that does nothing (on every tick: no generator is made)."""
    return _NOTHING if setup() is None else _run_span(name, run, **attributes)


@contextmanager
def _run_span(name: str, run: Any, **attributes: Any) -> Iterator[Any]:
    tracer = setup()
    stored = run.vars.get(TRACE_VARS)
    parent = _context_of(stored)
    if parent is None or not isinstance(stored, dict):  # a run started with traces off, or a bad one
        yield None
        return
    from opentelemetry import trace
    from opentelemetry.propagate import extract

    links = []
    for tp in stored.get("links") or []:
        ctx = trace.get_current_span(extract({"traceparent": tp})).get_span_context() if isinstance(tp, str) else None
        if ctx is not None and ctx.is_valid:
            links.append(trace.Link(ctx, {"abstractruntime.link": "delivery"}))
    if "links" in stored:
        run.vars[TRACE_VARS] = {k: v for k, v in stored.items() if k != "links"}
    attrs = {"abstractruntime.run_id": run.run_id, "abstractruntime.workflow": run.workflow_id,
             "abstractruntime.node": run.current_node or "",
             **{f"abstractruntime.{k}": v for k, v in attributes.items() if v is not None}}
    with tracer.start_as_current_span(name, context=parent, links=links, attributes=attrs) as span:
        ctx = span.get_span_context()
        from . import logs

        logs.note_trace(format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"))  # on the task's log lines
        yield span


def child_span(name: str, **attributes: Any) -> AbstractContextManager[Any]:
    """A span under the current one (a commit in a tick), or nothing when there is none."""
    return _NOTHING if setup() is None else _child_span(name, **attributes)


@contextmanager
def _child_span(name: str, **attributes: Any) -> Iterator[Any]:
    tracer = setup()
    from opentelemetry import trace

    if not trace.get_current_span().get_span_context().is_valid:
        yield None
        return
    with tracer.start_as_current_span(name, attributes={f"abstractruntime.{k}": v for k, v in attributes.items()
                                                        if v is not None}) as span:
        yield span
