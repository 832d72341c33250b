"""AbstractRuntime on Celery + Redis: the durable kernel (stdlib only).

Code written for AbstractRuntime 0.2.0 ports by importing these names from ``runtime``
(and the file backends from ``stores``); ``docs/porting.md`` has the full table.
"""

from .artifacts import (
    Artifact,
    ArtifactMetadata,
    ArtifactStore,
    InMemoryArtifactStore,
    artifact_ref,
    compute_artifact_id,
    get_artifact_id,
    is_artifact_ref,
    resolve_artifact,
)
from .chain import HashChainedLedgerStore, compute_record_hash, verify_ledger_chain
from .errors import (
    AbstractRuntimeError,
    CorruptRecordError,
    InvalidArtifactId,
    InvalidPlanError,
    InvalidRunId,
    InvalidTimeError,
    PayloadNotSerializable,
    RunAlreadyExists,
    RunNotFailed,
    RunNotFound,
    RunNotWaiting,
    SchedulerAlreadyRunning,
    StaleLease,
    StoreError,
    UnknownNodeError,
    VersionConflict,
    WaitKeyMismatch,
    WaitNotEnded,
    WorkflowAlreadyRegistered,
    WorkflowNotRegistered,
)
from .execution import Execution, current_execution
from .identity import ActorFingerprint
from .limits import LimitWarning, RuntimeConfig
from .memory import InMemoryLedgerStore, InMemoryRunStore
from .models import (
    Effect,
    EffectOutcome,
    EffectType,
    RunState,
    RunStatus,
    StepPlan,
    StepRecord,
    StepStatus,
    WaitReason,
    WaitState,
)
from .policies import DefaultEffectPolicy, EffectPolicy, NoRetryPolicy, RetryPolicy, compute_idempotency_key
from .registry import WorkflowRegistry
from .runtime import Runtime
from .scheduled import ScheduledRuntime, create_scheduled_runtime
from .scheduler import Scheduler, SchedulerStats
from .snapshots import InMemorySnapshotStore, Snapshot, SnapshotStore
from .spec import RunContext, WorkflowSpec
from .step import Action, PendingEffect, Transition
from .storage import EffectResultIndex, LedgerStore, QueryableRunStore, RunStore

__version__ = "0.1.0"

__all__ = [
    # Data model
    "Effect",
    "EffectOutcome",
    "EffectType",
    "RunState",
    "RunStatus",
    "StepPlan",
    "StepRecord",
    "StepStatus",
    "WaitReason",
    "WaitState",
    "WorkflowSpec",
    "RunContext",
    # Running
    "Runtime",
    "RuntimeConfig",
    "LimitWarning",
    "WorkflowRegistry",
    "Scheduler",
    "SchedulerStats",
    "ScheduledRuntime",
    "create_scheduled_runtime",
    # The kernel step, for drivers
    "Action",
    "PendingEffect",
    "Transition",
    # Policies
    "EffectPolicy",
    "DefaultEffectPolicy",
    "RetryPolicy",
    "NoRetryPolicy",
    "compute_idempotency_key",
    # Stores
    "RunStore",
    "QueryableRunStore",
    "LedgerStore",
    "EffectResultIndex",
    "InMemoryRunStore",
    "InMemoryLedgerStore",
    "HashChainedLedgerStore",
    "compute_record_hash",
    "verify_ledger_chain",
    "Snapshot",
    "SnapshotStore",
    "InMemorySnapshotStore",
    "Artifact",
    "ArtifactMetadata",
    "ArtifactStore",
    "InMemoryArtifactStore",
    "artifact_ref",
    "is_artifact_ref",
    "get_artifact_id",
    "resolve_artifact",
    "compute_artifact_id",
    # Identity
    "ActorFingerprint",
    # What is executing now (the driver sets it)
    "Execution",
    "current_execution",
    # Errors
    "AbstractRuntimeError",
    "CorruptRecordError",
    "InvalidArtifactId",
    "InvalidPlanError",
    "InvalidRunId",
    "InvalidTimeError",
    "PayloadNotSerializable",
    "RunAlreadyExists",
    "RunNotFound",
    "RunNotFailed",
    "RunNotWaiting",
    "SchedulerAlreadyRunning",
    "StaleLease",
    "StoreError",
    "UnknownNodeError",
    "VersionConflict",
    "WaitKeyMismatch",
    "WaitNotEnded",
    "WorkflowAlreadyRegistered",
    "WorkflowNotRegistered",
]
