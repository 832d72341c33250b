"""What the workers log: one line per task outcome, and the run id on every record.

Three parts, described for operators in ``docs/logging.md``:

* :func:`task_outcome` wraps each task: it puts the task's run id in a context variable
  and, when the task ends, logs one line such as
  ``tick run=8f3a0c1d wf=deploy node=ask -> park v=7 1.4ms`` (INFO; a dropped stale
  delivery and a sweep that found nothing to do at DEBUG). The engine adds what it learns
  on the way (workflow, node, version) with :func:`note`.
* :class:`RunIdFilter` sets ``record.run_id`` on every record: the run of the task that
  logged it, ``-`` outside a task. It goes on the worker's handlers, so records of any
  logger (node code, libraries, Celery) get it. Celery's ``task_prerun``/``task_postrun``
  signals set the run id too, so that Celery's own lines about the task (its error and
  traceback when a task raises) carry it.
* :func:`connect` hooks both, and the quieting of Celery's own per-task lines, into
  Celery's logging setup of a worker or beat process. Nothing here adds a handler: the
  library logs, the process that runs it decides where the lines go.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

__all__ = ["RunIdFilter", "SecretRedactor", "configured_secrets", "REDACTED", "JsonFormatter",
           "CeleryTaskLinesFilter", "task_outcome", "note", "short_run_id", "run_id_of", "current_run_id",
           "current_workflow", "note_trace", "connect", "LOG_FORMATS"]

#: Values of ``ABSTRACTRUNTIME_LOG_FORMAT``: Celery's text lines, or one JSON object a line.
LOG_FORMATS = ("text", "json")

#: ``record.run_id`` of a record logged outside any task.
NO_RUN = "-"

_run_id: ContextVar[str] = ContextVar("abstractruntime_run_id", default=NO_RUN)
#: The id of the Celery task running in this context (None outside one).
_task_id: ContextVar[str | None] = ContextVar("abstractruntime_task_id", default=None)
#: What the engine noted about the current task's run (None outside a task).
_notes: ContextVar[dict[str, Any] | None] = ContextVar("abstractruntime_notes", default=None)

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def short_run_id(run_id: str) -> str:
    """A run id for a log line or Flower: a UUID's first 8 digits, any other id whole."""
    return run_id[:8] if _UUID.fullmatch(run_id) else run_id


def current_run_id() -> str:
    """The run of the task running in this context, or ``-``."""
    return _run_id.get()


def current_workflow() -> str | None:
    """The workflow of the current task's run, once the engine has noted it (else None)."""
    notes = _notes.get()
    return notes.get("wf") if notes is not None else None


class RunIdFilter(logging.Filter):
    """Sets ``record.run_id`` (the current task's run, ``-`` outside a task) and, inside a task,
    what is known of it: ``workflow``, ``node``, ``step`` (the run's version), ``attempt`` and
    ``task_id`` (the Celery task's id); drops nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "run_id"):
            record.run_id = _run_id.get()
        notes = _notes.get()
        context = {"workflow": notes.get("wf"), "node": notes.get("node"), "step": notes.get("v"),
                   "attempt": notes.get("attempt"), "trace_id": notes.get("trace_id"),
                   "span_id": notes.get("span_id")} if notes is not None else {}
        context["task_id"] = _task_id.get()
        for key, value in context.items():
            if value is not None and not hasattr(record, key):
                setattr(record, key, value)
        return True


class SecretRedactor(logging.Filter):
    """Replaces each configured secret (:func:`configured_secrets`) in a record's message, its
    traceback and its stack with ``[redacted]``; drops nothing. On every handler of a worker
    and beat, in both log formats."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # the longest first, so that a secret containing another is replaced whole
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


#: What a redacted secret reads as.
REDACTED = "[redacted]"
#: Secrets shorter than this are not looked for (they would hide ordinary words).
MIN_SECRET_LEN = 6


def configured_secrets(env: dict[str, str] | None = None) -> list[str]:
    """The values no log line may show: ``ABSTRACTRUNTIME_SLA_WEBHOOK_SECRET``, the passwords in
    the Redis and broker URLs, and the value of every environment variable whose name says it
    holds one (``*_API_KEY``, ``*PASSWORD*``, ``*SECRET*``, ``*TOKEN*``...; the pattern of
    ``runtime._redact``), at least :data:`MIN_SECRET_LEN` characters long."""
    from urllib.parse import urlsplit

    from runtime._redact import SECRET_KEY_PATTERN

    env = dict(os.environ if env is None else env)
    out = []
    for name, value in env.items():
        if SECRET_KEY_PATTERN.search(name) and len(value) >= MIN_SECRET_LEN:
            out.append(value)
    for name in ("ABSTRACTRUNTIME_REDIS_URL", "ABSTRACTRUNTIME_BROKER_URL"):
        try:
            password = urlsplit(env.get(name, "")).password
        except ValueError:
            password = None
        if password and len(password) >= MIN_SECRET_LEN:
            out.append(password)
    return out


def note_trace(trace_id: str, span_id: str) -> None:
    """The current task's span (``workers/tracing.py``): its records, the outcome line included,
    carry ``trace_id`` and ``span_id`` (ignored outside a task)."""
    notes = _notes.get()
    if notes is not None:
        notes["trace_id"], notes["span_id"] = trace_id, span_id


def note(run_id: str, *, workflow: str | None = None, node: str | None = None, version: int | None = None) -> None:
    """Tell the current task's outcome line about ``run_id`` (ignored for other runs and outside a task)."""
    notes = _notes.get()
    if notes is None or notes["run"] != run_id:
        return
    if workflow is not None:
        notes["wf"] = workflow
    if node is not None:
        notes["node"] = node
    if version is not None:
        notes["v"] = version


class _Outcome:
    result: Any = None


def _elapsed(seconds: float) -> str:
    return f"{seconds * 1000:.1f}ms" if seconds < 1 else f"{seconds:.2f}s"


@contextmanager
def task_outcome(logger: logging.Logger, task: str, run_id: str | None, *, attempt: int = 1) -> Iterator[_Outcome]:
    """Run a task's body with its run id in context, then log its outcome line.

    Set ``.result`` on the yielded object to what the engine returned: a word (``park``,
    ``next``, ``stale``...) or, for the sweep, its counts. An exception is logged as
    ``-> raised <type>`` (Celery logs the traceback) and propagates.
    """
    out = _Outcome()
    notes: dict[str, Any] = {"run": run_id, "attempt": attempt}
    run_token = _run_id.set(run_id or NO_RUN)
    notes_token = _notes.set(notes)
    t0 = time.perf_counter()
    raised: BaseException | None = None
    try:
        yield out
    except BaseException as exc:
        raised = exc
        raise
    finally:
        elapsed = _elapsed(time.perf_counter() - t0)
        try:
            level, line = _line(task, notes, out.result, raised, attempt)
            logger.log(level, "%s %s", line, elapsed)
        finally:
            _notes.reset(notes_token)
            _run_id.reset(run_token)


def _line(task: str, notes: dict[str, Any], result: Any, raised: BaseException | None,
          attempt: int) -> tuple[int, str]:
    parts = [task]
    if notes["run"]:
        parts.append(f"run={short_run_id(notes['run'])}")
    for key in ("wf", "node"):
        if notes.get(key) is not None:
            parts.append(f"{key}={notes[key]}")
    if attempt > 1:
        parts.append(f"attempt={attempt}")
    level = logging.INFO
    if raised is not None:
        parts.append(f"-> raised {type(raised).__name__}")
    elif isinstance(result, dict):  # the sweep: quiet unless it sent something
        parts.append("-> " + " ".join(f"{k}={v}" for k, v in result.items()))
        if not any(result.values()):
            level = logging.DEBUG
    else:
        parts.append(f"-> {result}")
        if result == "stale":  # a duplicate or outdated delivery, dropped
            level = logging.DEBUG
    if notes.get("v") is not None and raised is None and not isinstance(result, dict):
        parts.append(f"v={notes['v']}")
    return level, " ".join(parts)


#: The fields :class:`RunIdFilter` adds inside a task, in the order JSON lines show them.
_CONTEXT_FIELDS = ("workflow", "node", "step", "attempt", "task_id", "trace_id", "span_id")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, process, run_id, message, and inside a task
    workflow, node, step, attempt and task_id (and exc)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "run_id": getattr(record, "run_id", NO_RUN),
            "message": record.getMessage(),
        }
        for key in _CONTEXT_FIELDS:  # inside a task: what is known of the run and the task
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info or record.exc_text:
            entry["exc"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(entry, ensure_ascii=False, default=str)


class CeleryTaskLinesFilter(logging.Filter):
    """Drops Celery's INFO lines about the given tasks ("Task ... received", "... succeeded",
    beat's "Sending due task"): the outcome line replaces them. Warnings and errors pass, and
    everything passes when the root logger is at DEBUG (``-l DEBUG``)."""

    def __init__(self, task_names: Iterable[str]) -> None:
        super().__init__()
        self.task_names = frozenset(task_names)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO or logging.getLogger().isEnabledFor(logging.DEBUG):
            return True
        data = getattr(record, "data", None)  # worker lines: the format's arguments, in `extra`
        if isinstance(data, dict):
            return data.get("name") not in self.task_names
        args = record.args if isinstance(record.args, tuple) else ()
        return not any(a in self.task_names for a in args)  # beat: (entry name, task name)


#: Loggers of Celery's per-task lines.
_CELERY_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy", "celery.beat")


def run_id_of(args: Any) -> str | None:
    """The run id a task's arguments start with, or None (no arguments, or not a valid id)."""
    from runtime.models import validate_run_id

    if not args:
        return None
    try:
        return validate_run_id(args[0])
    except ValueError:
        return None


def _install(logger: logging.Logger, json_lines: bool, redactor: SecretRedactor | None = None) -> None:
    for handler in logger.handlers:
        if not any(isinstance(f, RunIdFilter) for f in handler.filters):
            handler.addFilter(RunIdFilter())
        if redactor is not None and not any(isinstance(f, SecretRedactor) for f in handler.filters):
            handler.addFilter(redactor)
        if json_lines and not isinstance(handler.formatter, JsonFormatter):
            handler.setFormatter(JsonFormatter())


def connect(task_names: Iterable[str], *, log_format: str = "text") -> None:
    """Have Celery's logging setup (worker and beat) install the run id filter on its
    handlers, the JSON formatter when ``log_format`` is ``json``, and the filter quieting
    Celery's lines about ``task_names``. Idempotent; does nothing in other processes."""
    from celery import signals

    if log_format not in LOG_FORMATS:
        raise ValueError(f"ABSTRACTRUNTIME_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    json_lines = log_format == "json"
    names = frozenset(task_names)
    quiet = CeleryTaskLinesFilter(names)
    redactor = SecretRedactor(configured_secrets())

    def on_logger(logger: logging.Logger, **_: Any) -> None:
        _install(logger, json_lines, redactor)
        for name in _CELERY_TASK_LOGGERS:
            target = logging.getLogger(name)
            for f in [f for f in target.filters if isinstance(f, CeleryTaskLinesFilter)]:
                target.removeFilter(f)
            target.addFilter(quiet)

    def on_task_logger(logger: logging.Logger, **_: Any) -> None:
        _install(logger, json_lines, redactor)

    def on_prerun(task: Any = None, args: Any = None, task_id: Any = None, **_: Any) -> None:
        if getattr(task, "name", None) in names:
            _run_id.set(run_id_of(args) or NO_RUN)
            _task_id.set(str(task_id) if task_id else None)

    def on_postrun(task: Any = None, **_: Any) -> None:
        if getattr(task, "name", None) in names:
            _run_id.set(NO_RUN)
            _task_id.set(None)

    signals.after_setup_logger.connect(on_logger, weak=False, dispatch_uid="abstractruntime.logs.logger")
    signals.after_setup_task_logger.connect(on_task_logger, weak=False,
                                            dispatch_uid="abstractruntime.logs.task_logger")
    signals.task_prerun.connect(on_prerun, weak=False, dispatch_uid="abstractruntime.logs.prerun")
    signals.task_postrun.connect(on_postrun, weak=False, dispatch_uid="abstractruntime.logs.postrun")
