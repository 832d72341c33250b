"""OpenTelemetry traces (``docs/tracing.md``): one trace per run, from the producer's request to
its last LLM call, days later, on any worker.

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set;
off, every function here is a no-op (the kernel never imports OpenTelemetry). On, spans are
made one of two ways, per process:

* ``lean`` (the default): our own recorder and batch exporter (``workers/otlp.py``), a few
  microseconds a span, with dropped spans counted;
* ``sdk``: through the OpenTelemetry SDK, when the application set an SDK tracer provider of its
  own (its processors and sampler apply) or ``ABSTRACTRUNTIME_TRACES=sdk`` (``.[otel]``).

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

import atexit
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, cast

from . import logs, otlp

__all__ = ["enabled", "mode", "setup", "carrier", "keep_start_context", "keep_caller_link", "run_span",
           "child_span", "flush", "dropped", "reset", "TRACE_VARS"]

logger = logging.getLogger(__name__)

#: Where a run keeps its trace context: ``vars["_trace"] = {"traceparent", "tracestate", "links"}``.
TRACE_VARS = "_trace"
#: Links a run keeps for its next tick span, at most.
MAX_LINKS = 16

_state: dict[str, Any] = {"decided": False, "mode": None, "tracer": None, "exporter": None}
#: What a span hook gives with traces off (a null context can be entered again and again).
_NOTHING: AbstractContextManager[None] = nullcontext()


class _Current(threading.local):
    """The lean span being recorded in this thread's task (its children and outbound requests
    hang under it); a thread-local, not a ContextVar: setting one costs several times more."""

    span: _LeanSpan | None = None


_current = _Current()


def enabled() -> bool:
    return bool(otlp.endpoint_from_env())


def mode() -> str | None:
    """``"lean"``, ``"sdk"`` or None (traces off), decided once per process."""
    return setup()


def setup(service: str = "abstractruntime") -> str | None:
    """Decide how this process makes spans (once per process; None when traces are off)."""
    if _state["decided"]:
        return cast("str | None", _state["mode"])
    _state.update(decided=True, mode=None, tracer=None, exporter=None)
    if not enabled():
        return None
    wanted = os.environ.get("ABSTRACTRUNTIME_TRACES", "").strip().lower()
    if wanted not in ("", "lean", "sdk"):
        _warn_once(f"ABSTRACTRUNTIME_TRACES={wanted!r} is neither lean nor sdk; using lean")
        wanted = ""
    provider = _sdk_provider()
    if wanted == "sdk" or (wanted == "" and provider is not None):
        tracer = _sdk_tracer(service, provider)
        if tracer is not None:
            _state.update(mode="sdk", tracer=tracer)
            return "sdk"
        _warn_once("ABSTRACTRUNTIME_TRACES=sdk needs the OpenTelemetry SDK and its OTLP/HTTP exporter "
                   "(pip install '.[otel]'); using lean spans")
    try:
        exporter = otlp.Exporter(otlp.endpoint_from_env(), otlp.resource_from_env(service))
    except ValueError as exc:
        _warn_once(f"traces are off: {exc}")
        return None
    atexit.register(exporter.flush, 2.0)
    _state.update(mode="lean", exporter=exporter)
    return "lean"


def _sdk_provider() -> Any:
    """The application's own SDK tracer provider, if it set one."""
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        return None
    provider = trace.get_tracer_provider()
    return provider if isinstance(provider, TracerProvider) else None


def _sdk_tracer(service: str, provider: Any) -> Any:
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        return None
    if provider is None:  # asked for, and the application set none: the SDK's, batched to OTLP/HTTP
        provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME",
                                                                                             service)}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(timeout=5)))
        trace.set_tracer_provider(provider)
    return trace.get_tracer("abstractruntime")


def reset() -> None:
    """Forget this process's decision (after its environment changed): the next span decides again."""
    _state.update(decided=False, mode=None, tracer=None, exporter=None)


os.register_at_fork(after_in_child=reset)  # a pool child decides again (the batch thread is not forked)


def flush(timeout: float = 5.0) -> bool:
    """Send this process's queued spans now (lean spans; the SDK's provider flushes its own)."""
    exporter = _state["exporter"]
    if exporter is not None:
        return bool(exporter.flush(timeout))
    if _state["mode"] == "sdk":
        from opentelemetry import trace

        return bool(getattr(trace.get_tracer_provider(), "force_flush", lambda _t: True)(int(timeout * 1000)))
    return True


def dropped() -> dict[str, int]:
    """Lean spans this process dropped, by reason (``queue_full``, ``export_failed``)."""
    exporter = _state["exporter"]
    return dict(exporter.dropped) if exporter is not None else {}


def carrier() -> dict[str, str]:
    """The current span context as W3C headers (``traceparent``, maybe ``tracestate``); {} if none."""
    if setup() is None:
        return {}
    span = _current.span
    if span is not None:
        return {"traceparent": span.traceparent()}
    try:
        from opentelemetry.propagate import inject
    except ImportError:
        return {}
    out: dict[str, str] = {}
    inject(out)  # the caller's own context (a producer's request span)
    return out


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def keep_start_context(run_vars: dict[str, Any], run_id: str, workflow_id: str) -> None:
    """At a run's start: keep the caller's span context, or a new root span's, in ``run_vars``."""
    how = setup()
    if how is None:
        return
    kept = carrier()
    attrs = {"abstractruntime.run_id": run_id, "abstractruntime.workflow": workflow_id}
    if not kept.get("traceparent"):
        if how == "sdk":
            with _state["tracer"].start_as_current_span("abstractruntime.start", attributes=attrs):
                kept = carrier()
        else:
            with _LeanSpan("abstractruntime.start", otlp.new_trace_id(), b"", 1, attrs, []) as root:
                kept = {"traceparent": root.traceparent()}
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


_PARSED: dict[str, tuple[bytes, bytes, int] | None] = {}


def _parsed(traceparent: Any) -> tuple[bytes, bytes, int] | None:
    if not isinstance(traceparent, str):
        return None
    got = _PARSED.get(traceparent, False)
    if got is False:
        got = otlp.parse_traceparent(traceparent)
        if len(_PARSED) >= 4096:
            _PARSED.clear()
        _PARSED[traceparent] = got
    return cast("tuple[bytes, bytes, int] | None", got)


def _take_links(run: Any, stored: dict[str, Any]) -> list[str]:
    """The links kept since the last span (removed from the run: its next commit drops them)."""
    if "links" not in stored:
        return []
    run.vars[TRACE_VARS] = {k: v for k, v in stored.items() if k != "links"}
    return [x for x in stored["links"] or [] if isinstance(x, str)]


def run_span(name: str, run: Any, **attributes: Any) -> AbstractContextManager[Any]:
    """A span (``abstractruntime.tick``...) that is a child of the run's kept context, with the
    links kept since the last one. Traces off, or a run started with traces off: a context
    manager that does nothing (on every tick: nothing is made)."""
    how = setup()
    if how is None:
        return _NOTHING
    stored = run.vars.get(TRACE_VARS)
    if not isinstance(stored, dict):
        return _NOTHING
    attrs = {"abstractruntime.run_id": run.run_id, "abstractruntime.workflow": run.workflow_id,
             "abstractruntime.node": run.current_node or ""}
    for k, v in attributes.items():
        if v is not None:
            attrs["abstractruntime." + k] = v
    if how == "sdk":
        return _sdk_run_span(name, run, stored, attrs)
    parent = _parsed(stored.get("traceparent"))
    links = [(p[0], p[1]) for p in map(_parsed, _take_links(run, stored)) if p is not None]
    if parent is None:  # a malformed context: this span starts a new trace, which the run keeps
        _warn_once("a run's stored traceparent is malformed; it starts a new trace")
        span = _LeanSpan(name, otlp.new_trace_id(), b"", 1, attrs, links)
        run.vars[TRACE_VARS] = {"traceparent": span.traceparent()}
        return span
    if not parent[2] & 1:  # the producer's context is not sampled
        return _NOTHING
    return _LeanSpan(name, parent[0], parent[1], parent[2], attrs, links)


def child_span(name: str, **attributes: Any) -> AbstractContextManager[Any]:
    """A span under the current one (a commit in a tick), or nothing when there is none."""
    how = setup()
    if how is None:
        return _NOTHING
    if how == "sdk":
        return _sdk_child_span(name, attributes)
    parent = _current.span
    if parent is None:
        return _NOTHING
    return _LeanSpan(name, parent.trace_id, parent.span_id, parent.flags,
                     {"abstractruntime." + k: v for k, v in attributes.items() if v is not None}, [], note=False)


class _LeanSpan:
    """A span recorded by ``workers/otlp.py``: current while entered, queued for export at exit."""

    __slots__ = ("name", "trace_id", "span_id", "parent_id", "flags", "attrs", "links", "note", "start", "outer")

    def __init__(self, name: str, trace_id: bytes, parent_id: bytes, flags: int, attrs: dict[str, Any],
                 links: list[tuple[bytes, bytes]], note: bool = True) -> None:
        self.name, self.trace_id, self.parent_id, self.flags = name, trace_id, parent_id, flags
        self.span_id = otlp.new_span_id()
        self.attrs, self.links, self.note = attrs, links, note

    def traceparent(self) -> str:
        return f"00-{self.trace_id.hex()}-{self.span_id.hex()}-{self.flags & 0xFF:02x}"

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        self.attrs.update(attributes)

    def set_attribute(self, key: str, value: Any) -> None:
        self.attrs[key] = value

    def __enter__(self) -> _LeanSpan:
        self.outer, _current.span = _current.span, self
        if self.note:
            logs.note_trace(self.trace_id.hex(), self.span_id.hex())  # on the task's log lines
        self.start = time.time_ns()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        end = time.time_ns()
        _current.span = self.outer
        exporter = _state["exporter"]
        if exporter is not None:
            exporter.add((self.trace_id, self.span_id, self.parent_id, self.name, otlp.KIND_INTERNAL, self.start,
                          end, self.attrs, self.links, None if exc_type is None else f"{exc_type.__name__}: {exc}"))


# -- the SDK's spans ------------------------------------------------------------------------------------------------

@contextmanager
def _sdk_run_span(name: str, run: Any, stored: dict[str, Any], attrs: dict[str, Any]) -> Iterator[Any]:
    from opentelemetry import trace
    from opentelemetry.propagate import extract

    tracer = _state["tracer"]
    parent = extract({k: v for k, v in stored.items() if k in ("traceparent", "tracestate") and isinstance(v, str)})
    links = []
    for tp in _take_links(run, stored):
        ctx = trace.get_current_span(extract({"traceparent": tp})).get_span_context()
        if ctx.is_valid:
            links.append(trace.Link(ctx, {"abstractruntime.link": "delivery"}))
    if not trace.get_current_span(parent).get_span_context().is_valid:
        _warn_once("a run's stored traceparent is malformed; it starts a new trace")
        with tracer.start_as_current_span(name, context=trace.set_span_in_context(trace.INVALID_SPAN), links=links,
                                          attributes=attrs) as span:
            run.vars[TRACE_VARS] = carrier()
            yield _noted(span)
        return
    with tracer.start_as_current_span(name, context=parent, links=links, attributes=attrs) as span:
        yield _noted(span)


def _noted(span: Any) -> Any:
    ctx = span.get_span_context()
    logs.note_trace(format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"))
    return span


@contextmanager
def _sdk_child_span(name: str, attributes: dict[str, Any]) -> Iterator[Any]:
    from opentelemetry import trace

    if not trace.get_current_span().get_span_context().is_valid:
        yield None
        return
    with _state["tracer"].start_as_current_span(name, attributes={
            f"abstractruntime.{k}": v for k, v in attributes.items() if v is not None}) as span:
        yield span
