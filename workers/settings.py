"""Every setting of the Celery driver in one place, read from ``ABSTRACTRUNTIME_*`` variables.

``WorkerSettings.from_env()`` is what workers, beat and producers use; the Redis part is
:class:`stores.redis.RedisSettings` (URL, prefix, timeouts, the embedded server) and the
signing keys are :class:`stores.signing.SigningSettings`. With no broker URL the broker is
the same Redis that keeps the runs (the embedded one when no Redis URL is set either), so a
fresh machine needs no configuration. Every variable, with its default, is listed in
``docs/configuration.md`` (``tests/test_settings_doc.py`` keeps the two in step).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from stores._settings import settings_from_env
from stores.redis.settings import RedisSettings
from stores.redis.urls import mask_url
from stores.signing import SigningSettings

from .attrs import NAME_PATTERN

__all__ = ["WorkerSettings", "QUEUE_KINDS", "ENV_VARS"]

#: The queues the driver uses, by kind; each name is a setting (``queue_<kind>``).
QUEUE_KINDS = ("ticks", "llm", "tools", "subworkflows", "timers", "maintenance")

#: Environment variable -> settings field: ``ABSTRACTRUNTIME_`` and the field's name in capitals
#: (``tick_lease_s`` is ``ABSTRACTRUNTIME_TICK_LEASE_S``). Every one is in docs/configuration.md.
ENV_VARS = {f"ABSTRACTRUNTIME_{name.upper()}": name for name in (
    "broker_url", "imports", *(f"queue_{kind}" for kind in QUEUE_KINDS),
    "tick_lease_s", "effect_lease_s", "sweep_period_s", "sweep_batch", "timer_hold_s", "poison_after", "nodes_per_tick",
    "tick_max_attempts", "tick_backoff_s", "prefetch", "ack_emulation", "visibility_timeout_s",
)}
#: The stuck-run detector's thresholds (seconds without progress, per ``explain`` cause) and the
#: SLA webhooks' settings (``workers/stuck.py``, ``workers/sla.py``).
STUCK_FIELDS = ("stuck_no_consumer_s", "stuck_lease_expired_s", "stuck_orphaned_s", "stuck_running_s",
                "stuck_timer_overdue_s", "stuck_waiting_user_s", "stuck_waiting_event_s", "stuck_waiting_child_s",
                "stuck_waiting_job_s", "stuck_recheck_s")
ENV_VARS.update({f"ABSTRACTRUNTIME_{name.upper()}": name for name in (
    *STUCK_FIELDS, "sla_webhook_secret", "sla_webhook_timeout_s", "sla_webhook_attempts", "flow_rules_cache_s",
    "flow_llm_estimate_tokens", "waits_webhook_url", "run_attrs", "steps_per_task", "task_budget_ms",
    "inline_effects")})


@dataclass(frozen=True)
class WorkerSettings:
    """How workers, beat and producers reach each other and how runs are recovered."""

    #: The Celery broker (``redis://``, ``rediss://``, ``amqp://``...). None: the Redis that keeps
    #: the runs, as a Redis broker.
    broker_url: str | None = None
    #: Where the runs live (URL, key prefix, timeouts; no URL: the embedded redis-server).
    redis: RedisSettings = field(default_factory=RedisSettings)
    #: Modules a worker (and a producer) imports; they register workflows, tools and effect
    #: handlers with :mod:`workers.registry`. Comma-separated in the environment.
    imports: tuple[str, ...] = ()
    queue_ticks: str = "ticks"
    queue_llm: str = "llm"
    queue_tools: str = "tools"
    queue_subworkflows: str = "subworkflows"
    queue_timers: str = "timers"
    queue_maintenance: str = "maintenance"
    #: Seconds a tick may take between the commit that asks for it and its own commit before
    #: the sweep sends it again. Short: a lost tick costs this long. Too short: a slow node is
    #: run twice (only one of the two commits wins).
    tick_lease_s: float = 30.0
    #: The same for an effect task (an LLM call, tool calls). A running effect renews it every
    #: third of it, so it covers the time an effect message waits in its queue, not the
    #: effect's own duration; a worker that dies or stops mid-effect is replaced after it.
    effect_lease_s: float = 600.0
    #: Seconds between two recovery sweeps (beat): due timers are woken and expired leases
    #: re-dispatched. The worst lateness of a wake whose countdown was lost.
    sweep_period_s: float = 1.0
    #: Most timers and most leases one sweep handles.
    sweep_batch: int = 1000
    #: Seconds a timer claimed by the sweep waits before the sweep sends its wake again.
    timer_hold_s: float = 10.0
    #: Expired leases of one dispatch, with no commit in between, after which the sweep fails
    #: the run as poisoned (its node or effect kills the worker process) instead of sending
    #: it again; 0 (the default): never. Off by default because the sweep cannot tell a dead
    #: worker from a message still waiting in a long queue: set it so that this many
    #: ``tick_lease_s`` exceed the longest time a tick can wait in its queue.
    poison_after: int = 0
    #: Consecutive effect-free nodes one tick task runs, each committed on its own (K).
    nodes_per_tick: int = 1
    #: Steps (ticks, and effects that may run inline) one task runs for its run before it hands
    #: the run back to the queue (``workers/engine/inline.py``); 1: every step is its own task.
    steps_per_task: int = 16
    #: Milliseconds a task may keep running its run's steps before it hands the run back.
    task_budget_ms: int = 200
    #: Effect kinds (``tools``, ``llm``, ``subworkflows``) run inside the task that requested
    #: them, whatever their tools say (with ``steps_per_task`` > 1); tools registered with
    #: ``inline=True`` run inline anyway.
    inline_effects: tuple[str, ...] = ()
    #: Attempts of a node whose handler raises (decision D5), then the run fails.
    tick_max_attempts: int = 3
    #: Backoff before the second attempt of a raising node; doubled each attempt.
    tick_backoff_s: float = 1.0
    #: Messages a worker process reserves ahead (Celery's ``worker_prefetch_multiplier``).
    prefetch: int = 4
    #: Redis broker only: Kombu's ack emulation (unacked messages kept and restored after the
    #: visibility timeout). Off by default: recovery never waits for it (the sweep re-sends
    #: lost work after a lease), and a tick chain runs about 1.5x faster without it
    #: (``tests/bench/celery_ticks.py``).
    ack_emulation: bool = False
    #: Redis broker only: seconds before an unacknowledged message is delivered again.
    visibility_timeout_s: float = 3600.0
    #: Keys that sign ledger records and verify them (none by default).
    signing: SigningSettings = field(default_factory=SigningSettings)
    #: The stuck-run detector (run by the sweep): seconds a run may go without progress, per
    #: cause (the ``explain`` code), before it is listed as stuck; 0: never for that cause.
    #: ``NO_CONSUMER``: nobody consumes the queue of its message.
    stuck_no_consumer_s: float = 60.0
    #: ``LEASE_EXPIRED``: its lease expired and was not sent again (no sweep), counted from the expiry.
    stuck_lease_expired_s: float = 60.0
    #: ``ORPHANED``: running, but no message expected and no lease held.
    stuck_orphaned_s: float = 60.0
    #: Any other cause of a running run (``MOVING`` with no commit, ``RETRY_BACKOFF``...).
    stuck_running_s: float = 3600.0
    #: ``TIMER_OVERDUE``: a sleeping run this long past its wake time.
    stuck_timer_overdue_s: float = 60.0
    #: ``WAITING_USER``, ``WAITING_EVENT``, ``WAITING_CHILD``, ``WAITING_JOB``: waiting this long.
    stuck_waiting_user_s: float = 86400.0
    stuck_waiting_event_s: float = 86400.0
    stuck_waiting_child_s: float = 86400.0
    stuck_waiting_job_s: float = 86400.0
    #: Seconds between two looks at a stuck run (has it moved?).
    stuck_recheck_s: float = 30.0
    #: The key SLA webhooks are signed with (HMAC-SHA256 of the body); a webhook is not sent without one.
    sla_webhook_secret: str | None = field(default=None, repr=False)
    #: Seconds one webhook request may take.
    sla_webhook_timeout_s: float = 5.0
    #: Attempts of one webhook (the backoff doubles from 1 s) before it is given up.
    sla_webhook_attempts: int = 5
    #: Named waits' events (``wait.opened``, ``wait.reminder``...; ``docs/waits.md``) are also
    #: posted here, signed like the SLA webhooks (``sla_webhook_secret``, timeout, attempts).
    waits_webhook_url: str | None = None
    #: Flow control: seconds a process keeps the limits registry it read from Redis (0: read it at
    #: every admission). A rule changed with ``abstractruntime limits set`` applies within this time.
    flow_rules_cache_s: float = 1.0
    #: Flow control: tokens an LLM call reserves on a token or cost budget when its payload names
    #: no ``max_tokens`` (settled with the response's ``usage`` after its commit).
    flow_llm_estimate_tokens: int = 1000
    #: The attribute names a run may be started with (``attrs=``, ``start --attr``; indexed, see
    #: ``workers/attrs.py``). Comma-separated in the environment; empty (the default): attributes
    #: are refused.
    run_attrs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.broker_url is not None and (not isinstance(self.broker_url, str) or "://" not in self.broker_url):
            raise ValueError(f"WorkerSettings.broker_url must be a URL, got {self.broker_url!r}")
        if isinstance(self.imports, str):
            object.__setattr__(self, "imports", _split(self.imports))
        for kind in QUEUE_KINDS:
            name = getattr(self, f"queue_{kind}")
            if not isinstance(name, str) or not name or any(c.isspace() for c in name):
                raise ValueError(f"WorkerSettings.queue_{kind} must be a non-empty name without spaces, got {name!r}")
        for name in ("tick_lease_s", "effect_lease_s", "sweep_period_s", "timer_hold_s", "visibility_timeout_s"):
            _check(name, getattr(self, name), positive=True)
        _check("tick_backoff_s", self.tick_backoff_s, positive=False)
        for name in ("sweep_batch", "nodes_per_tick", "tick_max_attempts", "prefetch", "steps_per_task",
                     "task_budget_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"WorkerSettings.{name} must be a whole number of 1 or more, got {value!r}")

        for name in STUCK_FIELDS:
            _check(name, getattr(self, name), positive=name == "stuck_recheck_s")
        _check("sla_webhook_timeout_s", self.sla_webhook_timeout_s, positive=True)
        _check("flow_rules_cache_s", self.flow_rules_cache_s, positive=False)
        estimate = self.flow_llm_estimate_tokens
        if isinstance(estimate, bool) or not isinstance(estimate, int) or estimate < 0:
            raise ValueError(f"WorkerSettings.flow_llm_estimate_tokens must be a whole number of 0 or more, "
                             f"got {estimate!r}")
        url = self.waits_webhook_url
        if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
            raise ValueError(f"WorkerSettings.waits_webhook_url must be an http(s) URL, got {url!r}")
        attempts = self.sla_webhook_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"WorkerSettings.sla_webhook_attempts must be a whole number of 1 or more, "
                             f"got {attempts!r}")

        if isinstance(self.inline_effects, str):
            object.__setattr__(self, "inline_effects", _split(self.inline_effects))
        for kind in self.inline_effects:
            if kind not in ("tools", "llm", "subworkflows"):
                raise ValueError(f"WorkerSettings.inline_effects must name effect kinds among tools, llm, "
                                 f"subworkflows, got {kind!r}")
        if isinstance(self.run_attrs, str):
            object.__setattr__(self, "run_attrs", _split(self.run_attrs))
        for name in self.run_attrs:
            if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
                raise ValueError(f"WorkerSettings.run_attrs must be attribute names (a lower-case letter, then up "
                                 f"to 31 lower-case letters, digits or _), got {name!r}")

        poison = self.poison_after
        if isinstance(poison, bool) or not isinstance(poison, int) or poison < 0:
            raise ValueError(f"WorkerSettings.poison_after must be a whole number of 0 or more, got {poison!r}")

    def queue(self, kind: str) -> str:
        """The queue name of a kind (``ticks``, ``llm``...)."""
        if kind not in QUEUE_KINDS:
            raise ValueError(f"unknown queue kind {kind!r}; known: {', '.join(QUEUE_KINDS)}")
        return str(getattr(self, f"queue_{kind}"))

    @property
    def queues(self) -> tuple[str, ...]:
        return tuple(self.queue(kind) for kind in QUEUE_KINDS)

    def describe_broker(self) -> str:
        """The broker URL with any password masked (for logs and errors)."""
        return mask_url(self.broker_url) if self.broker_url else "(the Redis that keeps the runs)"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerSettings:
        """Settings from ``ABSTRACTRUNTIME_*`` variables (unset or empty: the default).

        A malformed value raises ValueError naming the variable.
        """
        env = os.environ if environ is None else environ
        parts = {"redis": RedisSettings.from_env(env), "signing": SigningSettings.from_env(env)}
        return settings_from_env(cls, ENV_VARS, env, values=parts,
                                 convert={"imports": _split, "run_attrs": _split, "inline_effects": _split})


def _split(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _check(name: str, value: object, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 \
            or (positive and value == 0):
        need = "a finite number above 0" if positive else "a finite number, 0 or more"
        raise ValueError(f"WorkerSettings.{name} must be {need}, got {value!r}")
