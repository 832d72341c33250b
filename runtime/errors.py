"""Every error of the project, under one root.

Where the reference (AbstractRuntime 0.2.0) raised a builtin, ours subclasses it too,
so that ``except KeyError`` / ``except ValueError`` written for the reference still works.
The classes defined here are the kernel's; the others live beside the code that raises
them (module in brackets) and join the tree through its branches::

    AbstractRuntimeError
    ├── WorkflowError
    │   ├── UnknownNodeError            (KeyError)   node id not in the workflow
    │   ├── InvalidPlanError            (ValueError) a plan that goes nowhere
    │   ├── WorkflowNotRegistered       (KeyError)   registry lookup failed
    │   ├── WorkflowAlreadyRegistered   (ValueError)
    │   ├── InvalidSlaRule              (ValueError) an SLA rule refused at registration,
    │   │                                              naming the field [workers.sla]
    │   ├── InvalidAnswerSchema         (ValueError) a question's schema outside the subset,
    │   │                                              naming the keyword [runtime.answers]
    │   ├── InvalidWaitSpec             (ValueError) a named wait set refused as it opens,
    │   │                                              naming the field [runtime.waitspec]
    │   └── InvalidSchedule             (ValueError) a schedule refused when set, naming the
    │                                                  field [workers.schedules]
    ├── RunError
    │   ├── RunNotFound                 (KeyError)
    │   ├── RunAlreadyExists            (ValueError) explicit run id taken (D7)
    │   ├── RunNotWaiting               (ValueError)
    │   ├── RunNotFailed                (ValueError) retry of a run that did not fail (workers)
    │   ├── InvalidRunId                (ValueError) a run id a store cannot hold
    │   ├── InvalidRunAttribute         (ValueError) a run attribute refused at the start (nothing
    │   │                                              stored) or in a query, naming it [workers.attrs]
    │   ├── WaitKeyMismatch             (ValueError)
    │   ├── WaitNotEnded                (ValueError) an action that cannot end this wait (workers)
    │   ├── InvalidAnswer               (ValueError) an answer its question's schema refuses;
    │   │                                              nothing written [runtime.answers]
    │   ├── UnknownWait                 (KeyError)   an answer to no open wait; lists the open
    │   │                                              ones [runtime.waitset]
    │   ├── AmbiguousWait               (ValueError) respond with several waits open [runtime.waitset]
    │   ├── WaitClosed                  (ValueError) a wait answered (by whom, when), superseded
    │   │   │                                          or expired [runtime.waitset]
    │   │   └── WaitExpired                          its deadline passed
    │   ├── NotAssignee                 (PermissionError) not an assignee of a wait that enforces them
    │   ├── AnswerTooLarge              (ValueError) an answer over 64 KiB of JSON
    │   └── WaitTimeout                 (TimeoutError) a run did not get there in time
    │                                                  [workers.client]
    ├── EffectError                                  an effect could not be performed
    │   ├── LLMCallError                             an LLM call failed; says if a retry may help
    │   │                                              [runtime.integrations.abstractcore]
    │   └── HttpStatusError                          an HTTP error status from the LLM server
    │                                                  [runtime.integrations.abstractcore]
    ├── PayloadNotSerializable          (TypeError)  names the key JSON cannot hold
    ├── InvalidTimeError                (ValueError) an ``until`` that is not ISO-8601
    ├── SchedulerError
    │   └── SchedulerAlreadyRunning     (RuntimeError)
    ├── StoreError
    │   ├── CorruptRecordError          (ValueError) names the file or key
    │   ├── InvalidArtifactId           (ValueError)
    │   ├── VersionConflict                          another writer moved the run
    │   │   └── StaleLease                           the writer's lease was granted again since
    │   ├── ValueTooLarge               (ValueError) over max_value_bytes [stores.redis.codec]
    │   ├── SigningError                (ValueError) a key that cannot be read or used
    │   │                                              [stores.signing]
    │   ├── RedisUnavailable                         Redis cannot be reached [stores.redis.errors]
    │   │   └── EmbeddedRedisFailed                  the embedded redis-server did not start
    │   │       └── RedisServerMismatch              its folder was written by a newer Redis
    │   └── RedisServerNotFound (FileNotFoundError)  no redis-server to start [stores.redis.errors]
    │       └── ChosenRedisServerNotFound            not the one ABSTRACTRUNTIME_REDIS_SERVER names
    ├── AbstractCoreMissing             (ImportError) the local LLM mode needs abstractcore
    │                                                  [runtime.integrations.abstractcore]
    ├── InvalidLimitRule                (ValueError) a flow-control key or rule, naming the field
    │                                                  [workers.flow.rules]
    ├── BudgetExceeded                               a flow-control rule refused an admission for good
    │                                                  [workers.flow.rules]
    ├── InvalidPrice                    (ValueError) a price-table entry, naming the field
    │                                                  [stores.redis.limits]
    ├── UnknownModelPrice               (KeyError)   a model with no price and no `*` default
    │                                                  [stores.redis.limits]
    ├── UnknownSchedule                 (KeyError)   no schedule of that name [workers.schedules]
    ├── ScheduleExists                  (ValueError) a schedule name taken [stores.redis.schedules]
    └── DrainLimitReached               (RuntimeError) a stub drain whose runs never rest
                                                       [workers.testing]

The kernel never imports the modules in brackets (imports point one way, DESIGN.md);
``tests/test_errors_tree.py`` checks that this drawing names every subclass of the root.
"""

from __future__ import annotations

from typing import Any


class AbstractRuntimeError(Exception):
    """Raised for any error of this package (the root of the hierarchy)."""

    def __str__(self) -> str:
        # KeyError quotes its message; keep messages readable for the KeyError subclasses.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


# -- Workflows ---------------------------------------------------------------------------------


class WorkflowError(AbstractRuntimeError):
    """Raised when a workflow definition or plan is not usable."""


class UnknownNodeError(WorkflowError, KeyError):
    """Raised when a run points at a node id its workflow does not have."""

    def __init__(self, *, workflow_id: str, node_id: str) -> None:
        self.workflow_id = workflow_id
        self.node_id = node_id
        super().__init__(f"Unknown node_id '{node_id}' in workflow '{workflow_id}'")


class InvalidPlanError(WorkflowError, ValueError):
    """Raised when a node returns a plan with no way forward (no next node, effect or completion)."""

    def __init__(self, message: str, *, node_id: str | None = None) -> None:
        self.node_id = node_id
        super().__init__(message)


class WorkflowNotRegistered(WorkflowError, KeyError):
    """Raised when a workflow id is missing from the registry."""

    def __init__(self, workflow_id: str, *, hint: str | None = None) -> None:
        self.workflow_id = workflow_id
        super().__init__(f"Workflow '{workflow_id}' is not registered. "
                         + (hint if hint is not None else "Register it with registry.register(spec)."))


class WorkflowAlreadyRegistered(WorkflowError, ValueError):
    """Raised when a workflow id is registered twice."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        super().__init__(
            f"Workflow '{workflow_id}' is already registered. Unregister it first to replace it."
        )


# -- Runs --------------------------------------------------------------------------------------


class RunError(AbstractRuntimeError):
    """Raised when an operation does not fit the run it targets."""


class RunNotFound(RunError, KeyError):
    """Raised when a run id is not in the run store."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"Unknown run_id: {run_id}")


class RunAlreadyExists(RunError, ValueError):
    """Raised when ``start(run_id=...)`` names a run id that is already taken (decision D7)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"Run '{run_id}' already exists; pick another run_id or omit it")


class InvalidRunId(RunError, ValueError):
    """Raised when a run id holds characters a store cannot use safely (path separators...)."""

    def __init__(self, run_id: object) -> None:
        self.run_id = run_id
        super().__init__(
            f"Invalid run_id {run_id!r}: use 1-200 letters, digits, '_', '-', '.' or ':' (not starting with '.')"
        )


class RunNotWaiting(RunError, ValueError):
    """Raised when resuming a run that is not waiting."""

    def __init__(self, message: str = "Run is not waiting", *, run_id: str | None = None,
                 status: Any = None) -> None:
        self.run_id = run_id
        self.status = status
        super().__init__(message)


class RunNotFailed(RunError, ValueError):
    """Raised when an operator retries a run that did not fail (running, waiting, completed or
    cancelled); nothing was changed."""

    def __init__(self, *, run_id: str, status: Any) -> None:
        self.run_id = run_id
        self.status = status
        value = getattr(status, "value", status)
        super().__init__(f"Run '{run_id}' is {value}, not failed: only a failed run is retried"
                         + (" (a cancelled run stays cancelled)" if value == "cancelled" else ""))


class WaitKeyMismatch(RunError, ValueError):
    """Raised when a resume names another wait key than the one the run waits on."""

    def __init__(self, *, run_id: str, expected: str | None, got: str | None, context: str | None = None) -> None:
        self.run_id = run_id
        self.expected = expected
        self.got = got
        super().__init__(f"wait_key mismatch: expected '{expected}', got '{got}'"
                         + (f" ({context})" if context else ""))


class WaitNotEnded(RunError, ValueError):
    """Raised when an answer, a resume, an event or a wake is sent to a run whose wait it cannot end.

    ``action`` is what was tried (``respond``, ``resume``, ``emit``, ``wake``); ``reason``,
    ``wait_key``, ``until`` and ``since`` describe the wait. Nothing was changed.
    """

    def __init__(self, *, run_id: str, action: str, reason: str, wait_key: str | None, until: str | None,
                 since: str | None, waits_for: str, hint: str) -> None:
        self.run_id = run_id
        self.action = action
        self.reason = reason
        self.wait_key = wait_key
        self.until = until
        self.since = since
        super().__init__(f"{action} refused: run '{run_id}' waits {waits_for} since {since}; {hint}")


# -- Effects -----------------------------------------------------------------------------------


class EffectError(AbstractRuntimeError):
    """Raised when an effect (an LLM call, a tool call) cannot be performed."""


# -- Values ------------------------------------------------------------------------------------


class PayloadNotSerializable(AbstractRuntimeError, TypeError):
    """Raised when a value bound for storage is not JSON; names the first bad key."""

    def __init__(self, *, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path} is not JSON-serializable: {reason}")


class InvalidTimeError(AbstractRuntimeError, ValueError):
    """Raised when a time field is not an ISO-8601 string."""

    def __init__(self, *, field: str, value: Any) -> None:
        self.field = field
        self.value = value
        super().__init__(f"{field} must be an ISO-8601 time such as '2026-01-01T00:00:00Z', got {value!r}")


# -- Scheduler ---------------------------------------------------------------------------------


class SchedulerError(AbstractRuntimeError):
    """Raised when the in-process scheduler is misused."""


class SchedulerAlreadyRunning(SchedulerError, RuntimeError):
    """Raised when starting a scheduler that already runs."""

    def __init__(self) -> None:
        super().__init__("Scheduler is already running")


# -- Stores ------------------------------------------------------------------------------------


class StoreError(AbstractRuntimeError):
    """Raised when a store cannot read or write what was asked."""


class CorruptRecordError(StoreError, ValueError):
    """Raised when stored data cannot be decoded; names where it lives."""

    def __init__(self, *, location: str, reason: str, run_id: str | None = None) -> None:
        self.location = location
        self.reason = reason
        self.run_id = run_id
        super().__init__(f"Corrupt stored data in {location}: {reason}")


class InvalidArtifactId(StoreError, ValueError):
    """Raised when an artifact id is empty or holds characters other than [A-Za-z0-9_-]."""

    def __init__(self, artifact_id: Any) -> None:
        self.artifact_id = artifact_id
        if not artifact_id:
            msg = "artifact_id cannot be empty"
        else:
            msg = f"Invalid artifact_id {artifact_id!r}: only letters, digits, '_' and '-' are allowed"
        super().__init__(msg)


class VersionConflict(StoreError):
    """Raised when a commit finds the run moved by another writer since it was loaded."""

    def __init__(self, *, run_id: str, expected_version: int, actual_version: int | None) -> None:
        self.run_id = run_id
        self.expected_version = expected_version
        self.actual_version = actual_version
        super().__init__(
            f"Run '{run_id}' was moved by another writer: expected version {expected_version}, "
            f"found {actual_version}"
        )


class StaleLease(VersionConflict):
    """Raised when a writer holding a lease commits after the lease was granted to another.

    Every grant of a run's lease (a dispatch, a re-send by the recovery sweep) adds one to the
    run's fencing token; a worker carries the token it was given and the commit is refused
    when the run's is newer: a worker paused past its lease (a GC pause, SIGSTOP, a slow
    network) cannot apply its work over the one that took over. ``token`` is the one the
    writer held, ``current`` the run's. A subclass of :class:`VersionConflict`, since the run
    moved on without this writer, and the same handling (drop the work) applies. A store
    outside the runtime can raise it too, with the token a tool read from
    :func:`runtime.current_execution`.
    """

    def __init__(self, *, run_id: str, token: int, current: int) -> None:
        self.token = token
        self.current = current
        StoreError.__init__(
            self, f"Run '{run_id}': stale lease: this writer holds fencing token {token}, the run's is {current} "
                  "(its lease was granted to another since)")
        self.run_id = run_id
        self.expected_version = -1
        self.actual_version = None
