"""Prometheus metrics (``docs/metrics.md``): per-process series written by every worker, and
fleet-wide gauges read from Redis by one exporter, ``abstractruntime metrics --port``.

Off unless ``prometheus_client`` is installed (``pip install '.[metrics]'``) and
``ABSTRACTRUNTIME_METRICS_DIR`` (or Prometheus's own ``PROMETHEUS_MULTIPROC_DIR``) names a
folder: each worker process (prefork children included) then writes its counters and
histograms there, in ``prometheus_client``'s multiprocess mode, and the exporter on the same
host adds them up at each scrape. With metrics off every function here returns at once.

Per process (label values are workflow ids, effect types, queue kinds, models, outcomes;
never run ids):

* ``abstractruntime_tasks_total{task, workflow, outcome}`` and
  ``abstractruntime_task_duration_seconds{task, workflow}``: every tick, effect, wake and sweep
  task (``outcome`` is what the engine returned: ``next``, ``park``, ``finish``, ``execute``,
  ``retry``, ``stale``...; ``stale`` is a delivery the run had moved past, a version conflict
  or a refused stale lease);
* ``abstractruntime_inline_steps_total{step, workflow, outcome}``: the steps a task ran for its
  run after its own, with ``steps_per_task`` above 1 (``step``: ``tick`` or ``effect``; a run's
  steps are these plus its tick, wake and effect tasks);
* ``abstractruntime_lease_expiries_total``: leases the sweep found expired and sent again;
* ``abstractruntime_commit_refusals_total{reason}``: ``version_conflict`` or ``stale_lease``;
* ``abstractruntime_trace_spans_dropped_total{reason}``: spans not exported (``queue_full``,
  ``export_failed``: no collector, an error status, a timeout);
* ``abstractruntime_timer_lateness_seconds{kind}``: every timer fired (``until`` wakes, named
  waits' ``reminder``, ``escalation``, ``deadline``), from its due time by the Redis clock;
* ``abstractruntime_llm_tokens_total{model, direction, tenant}`` and
  ``abstractruntime_llm_cost_usd_total{model, tenant}`` (by the flow-control price table, when it
  prices the model; ``tenant``: the run's flow-control tenant, ``-`` for none).

Fleet-wide, computed at each scrape (:class:`FleetCollector`): runs by status, waiting runs by
reason, open named waits, overdue timers, expired leases, stuck runs by cause, and per queue
its depth and its live consumers.
"""

from __future__ import annotations

import os
import socket
from typing import Any

__all__ = ["enabled", "task_done", "inline_step", "timer_fired", "llm_tokens", "llm_cost", "commit_refused",
           "spans_dropped", "FleetCollector", "prepare_environment", "WorkerSeries", "METRIC_NAMES"]

_ENV_DIR = "ABSTRACTRUNTIME_METRICS_DIR"
_PROM_DIR = "PROMETHEUS_MULTIPROC_DIR"

#: The families the workers write, by key: (name, type, help, labels). The workers make their
#: metrics from it, and the exporter serves each from the first scrape.
_WORKER_FAMILIES: dict[str, tuple[str, str, str, list[str]]] = {
    "tasks": ("abstractruntime_tasks", "counter", "Tasks run, by kind, workflow and outcome",
              ["task", "workflow", "outcome"]),
    "duration": ("abstractruntime_task_duration_seconds", "histogram", "Task duration", ["task", "workflow"]),
    "inline": ("abstractruntime_inline_steps", "counter", "Steps a task ran for its run after its own (inline "
               "effects with continuation), by step (tick, effect), workflow and outcome",
               ["step", "workflow", "outcome"]),
    "leases": ("abstractruntime_lease_expiries", "counter", "Expired leases the sweep sent again", []),
    "lateness": ("abstractruntime_timer_lateness_seconds", "histogram", "How late timers fired (Redis clock)",
                 ["kind"]),
    "tokens": ("abstractruntime_llm_tokens", "counter", "LLM tokens", ["model", "direction", "tenant"]),
    "cost": ("abstractruntime_llm_cost_usd", "counter", "LLM cost by the price table, US dollars",
             ["model", "tenant"]),
    "spans_dropped": ("abstractruntime_trace_spans_dropped", "counter", "Trace spans dropped: the queue was full "
                      "(queue_full) or the collector could not take them (export_failed)", ["reason"]),
    "refused": ("abstractruntime_commit_refusals", "counter", "Commits refused: another writer moved the run "
                "(version_conflict) or the writer's lease was granted again (stale_lease)", ["reason"]),
}

#: Every metric name the exporter serves (the dashboard's queries may use only these).
METRIC_NAMES = (
    *(name + ("_total" if kind == "counter" else "") for name, kind, _doc, _labels in _WORKER_FAMILIES.values()),
    "abstractruntime_runs", "abstractruntime_waiting_runs", "abstractruntime_open_named_waits",
    "abstractruntime_overdue_timers", "abstractruntime_expired_leases", "abstractruntime_stuck_runs",
    "abstractruntime_queue_depth", "abstractruntime_queue_consumers",
)

_metrics: dict[str, Any] | None = None
_pid = 0


def prepare_environment(env: Any = None) -> None:
    """Point ``prometheus_client`` at ``<ABSTRACTRUNTIME_METRICS_DIR>/<host name>`` (before it is
    imported): a folder per host (a container in Compose), so that hosts sharing one volume never
    write the same file (the files are named by process id)."""
    target = os.environ if env is None else env
    folder = target.get(_ENV_DIR)
    if folder and not target.get(_PROM_DIR):
        own = os.path.join(folder, socket.gethostname())
        os.makedirs(own, exist_ok=True)
        target[_PROM_DIR] = own


class WorkerSeries:
    """The exporter's view of the workers' series: every ``*.db`` file under
    ``ABSTRACTRUNTIME_METRICS_DIR`` (each host's folder), added up at each scrape."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def collect(self) -> Any:
        import glob

        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
        from prometheus_client.multiprocess import MultiProcessCollector

        files = glob.glob(os.path.join(self.folder, "*.db")) + glob.glob(os.path.join(self.folder, "*", "*.db"))
        merged = list(MultiProcessCollector.merge(files, accumulate=True))
        yield from merged
        # a series no process has written yet (no lease expired so far...) is served empty, so
        # that a dashboard or an alert finds the name from the first scrape
        seen = {m.name for m in merged}
        for name, kind, doc, labels in _WORKER_FAMILIES.values():
            if name not in seen:
                yield (CounterMetricFamily if kind == "counter" else HistogramMetricFamily)(name, doc, labels=labels)


def enabled() -> bool:
    """Metrics are on: a folder is named and ``prometheus_client`` is installed (looked for, not
    imported: it reads ``PROMETHEUS_MULTIPROC_DIR`` once, when it is first imported)."""
    import importlib.util

    if not os.environ.get(_PROM_DIR) and not os.environ.get(_ENV_DIR):
        return False
    return importlib.util.find_spec("prometheus_client") is not None


_LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0)


_off_pid = 0


def _get() -> dict[str, Any] | None:
    """The metric objects of this process (made on first use; None when metrics are off, which is
    decided once per process)."""
    global _metrics, _pid, _off_pid
    pid = os.getpid()
    if _pid == pid:
        return _metrics
    if _off_pid == pid:
        return None
    if not enabled():
        _off_pid = pid
        return None
    prepare_environment()
    from prometheus_client import Counter, Histogram, values

    # prometheus_client picks its value class (multiprocess or not) when first imported, and
    # `celery` imports it early through a plugin (Flower): pick again now that the folder is set.
    values.ValueClass = values.get_value_class()

    _pid = os.getpid()
    # registry=None: the files are what the exporter reads, and a process forked after these
    # were made (a pool child) makes its own without a clash in the default registry
    made: dict[str, Any] = {}
    for key, (name, kind, doc, labels) in _WORKER_FAMILIES.items():
        if kind == "counter":
            made[key] = Counter(name, doc, labels, registry=None)
        else:
            buckets = _LATENESS_BUCKETS if key == "lateness" else Histogram.DEFAULT_BUCKETS
            made[key] = Histogram(name, doc, labels, buckets=buckets, registry=None)
    made["children"] = {}
    _metrics = made
    return _metrics


def _child(m: dict[str, Any], family: str, *labels: str) -> Any:
    """The series of ``family`` with ``labels``, made once per process (``labels()`` costs more
    than the write itself)."""
    key = (family, *labels)
    child = m["children"].get(key)
    if child is None:
        child = m["children"][key] = m[family].labels(*labels)
    return child


def _word(outcome: Any) -> str:
    """What the engine returned, as a label value (None: the call raised)."""
    return str(outcome) if outcome is not None else "raised"


def task_done(task: str, workflow: str | None, outcome: Any, seconds: float) -> None:
    """One task ended (``workers/app.py`` calls it for every task)."""
    m = _get()
    if m is None:
        return
    wf = workflow or "-"
    if isinstance(outcome, dict):  # the sweep's counts
        m["leases"].inc(int(outcome.get("leases") or 0))
        word = "swept"
    else:
        word = _word(outcome)
    _child(m, "tasks", task, wf, word).inc()
    _child(m, "duration", task, wf).observe(seconds)


def inline_step(step: str, workflow: str | None, outcome: Any) -> None:
    """A task ran a step of its run after its own (``workers/engine/inline.py``)."""
    m = _get()
    if m is not None:
        _child(m, "inline", step, workflow or "-", _word(outcome)).inc()


def timer_fired(kind: str, late_ms: float) -> None:
    m = _get()
    if m is not None:
        m["lateness"].labels(kind).observe(max(0.0, late_ms) / 1000)


def llm_tokens(model: str, tokens_in: int, tokens_out: int, tenant: str | None = None) -> None:
    """Tokens of one LLM call; ``tenant``: the flow-control tenant the run was started under."""
    m = _get()
    if m is not None:
        m["tokens"].labels(model, "input", tenant or "-").inc(max(0, tokens_in))
        m["tokens"].labels(model, "output", tenant or "-").inc(max(0, tokens_out))


def commit_refused(reason: str) -> None:
    """A commit refused (``version_conflict`` or ``stale_lease``); its task's outcome is ``stale``."""
    m = _get()
    if m is not None:
        m["refused"].labels(reason).inc()


def spans_dropped(reason: str, count: int) -> None:
    """Spans the lean exporter dropped (``workers/otlp.py``)."""
    m = _get()
    if m is not None:
        m["spans_dropped"].labels(reason).inc(count)


def llm_cost(model: str, usd: float, tenant: str | None = None) -> None:
    m = _get()
    if m is not None and usd > 0:
        m["cost"].labels(model, tenant or "-").inc(usd)


class FleetCollector:
    """Fleet-wide gauges, read from Redis (and the broker) at each scrape by the exporter."""

    def __init__(self, backend: Any, settings: Any, broker: Any = None) -> None:
        self.backend, self.settings, self.broker = backend, settings, broker

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        from runtime import RunStatus, WaitReason

        from .fleet import consumers_by_queue
        from .settings import QUEUE_KINDS
        from .stuck import stuck_counts

        b, k = self.backend, self.backend.keys
        now = b.time_ms()
        runs = GaugeMetricFamily("abstractruntime_runs", "Runs by status", labels=["status"])
        for status in RunStatus:
            runs.add_metric([status.value], b.count_runs(status=status))
        yield runs
        waiting = GaugeMetricFamily("abstractruntime_waiting_runs", "Waiting runs by reason", labels=["reason"])
        for reason in WaitReason:
            waiting.add_metric([reason.value], int(b.client.zcard(k.by_wait_reason(reason.value))))
        yield waiting
        yield GaugeMetricFamily("abstractruntime_open_named_waits", "Open named waits",
                                value=int(b.client.zcard(k.waits_open())))
        yield GaugeMetricFamily("abstractruntime_overdue_timers", "Timers past due by more than 5 s",
                                value=int(b.client.zcount(k.timers(), "-inf", now - 5000)))
        yield GaugeMetricFamily("abstractruntime_expired_leases", "Leases expired and not yet sent again",
                                value=int(b.count_leases_expired(now)))
        stuck = GaugeMetricFamily("abstractruntime_stuck_runs", "Stuck runs by cause", labels=["cause"])
        for cause, n in stuck_counts(b).items():
            stuck.add_metric([cause], n)
        yield stuck
        depth = GaugeMetricFamily("abstractruntime_queue_depth", "Messages waiting in a queue", labels=["queue"])
        consumers = GaugeMetricFamily("abstractruntime_queue_consumers", "Live worker processes consuming a queue",
                                      labels=["queue"])
        from .heartbeat import ALIVE_WITHIN_S

        live = consumers_by_queue(b.live_processes(now - int(ALIVE_WITHIN_S * 1000)))
        for kind in QUEUE_KINDS:
            queue = self.settings.queue(kind)
            if self.broker is not None:
                try:
                    depth.add_metric([kind], self.broker.depth(queue))
                except Exception:  # a broker that cannot be read: no sample, not a failed scrape
                    pass
            consumers.add_metric([kind], len(live.get(queue, ())))
        yield depth
        yield consumers
