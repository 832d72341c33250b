"""Every Redis key the stores use, built in one place.

Keys that belong to one run carry the run id as a Redis Cluster hash tag (``{run_id}``),
so that everything about one run lives in one slot. Cross-run indexes are global keys.
``docs/redis-layout.md`` lists each key, its type and who writes it.
"""

from __future__ import annotations

__all__ = ["Keys"]


class Keys:
    """Key names under one prefix (default ``ar``)."""

    def __init__(self, prefix: str = "ar", *, cluster: bool = False) -> None:
        if not prefix or any(c in prefix for c in "{} \t\r\n"):
            raise ValueError(f"Invalid Redis key prefix {prefix!r}: it must be non-empty, without braces or spaces")
        self.prefix = prefix
        self.cluster = cluster
        # On Redis Cluster every cross-run index shares one hash tag, so that the index step
        # of a commit touches one slot (the run's own keys are in the run's slot).
        self._g = f"{prefix}:{{{prefix}-idx}}:" if cluster else f"{prefix}:"

    # -- one run (one cluster slot) --------------------------------------------------------------

    def run(self, run_id: str) -> str:
        """HASH of one run:

        * ``s`` the state (msgpack of ``RunState.to_dict()``);
        * ``v`` its version, +1 per commit;
        * ``h`` the ledger's chain head (``record_hash`` of the newest record);
        * ``t`` the token of the last script call that wrote it (a re-sent call is a no-op);
        * ``d`` the dispatch, what the run expects next under the Celery driver (msgpack;
          ``stores/redis/dispatch.py``), absent when nothing;
        * ``f`` the run's newest failure, JSON, outside the hash chain (``RedisBackend.set_last_failure``);
        * ``n`` how many leases of the current dispatch expired with no commit in between (the
          sweep adds one per expiry, ``RedisBackend.count_lost``; every commit removes it).
        """
        return f"{self.prefix}:{{{run_id}}}:run"

    def ledger(self, run_id: str) -> str:
        """STREAM, one entry per ledger record (field ``r``: msgpack StepRecord)."""
        return f"{self.prefix}:{{{run_id}}}:ledger"

    def results(self, run_id: str) -> str:
        """HASH idempotency key -> msgpack result of the first completed record with that key."""
        return f"{self.prefix}:{{{run_id}}}:results"

    def children(self, parent_run_id: str) -> str:
        """SET of the run ids whose parent is this run (in the parent's slot; on Cluster, in the
        index slot, because the child's commit writes it)."""
        if self.cluster:
            return f"{self._g}children:{parent_run_id}"
        return f"{self.prefix}:{{{parent_run_id}}}:children"

    # -- cross-run indexes -----------------------------------------------------------------------

    def by_status(self, status: str) -> str:
        """ZSET run id -> updated_at (epoch µs), runs of one status."""
        return f"{self._g}idx:status:{status}"

    def by_workflow(self, workflow_id: str) -> str:
        """ZSET run id -> updated_at (epoch µs), runs of one workflow."""
        return f"{self._g}idx:workflow:{workflow_id}"

    def by_wait_reason(self, reason: str) -> str:
        """ZSET run id -> updated_at (epoch µs), waiting runs of one wait reason."""
        return f"{self._g}idx:reason:{reason}"

    def by_attr(self, name: str, value: str) -> str:
        """ZSET run id -> created_at (epoch ms, microseconds as the fraction), the runs started with
        the attribute ``name`` set to ``value`` (its stored text). Written by the producer just
        before the create commit; entries that can never be right are dropped by the listings
        that meet them (``stores/redis/attrs.py``)."""
        return f"{self._g}idx:attr:{name}:{value}"

    def by_updated(self) -> str:
        """ZSET run id -> updated_at (epoch µs), every run."""
        return f"{self._g}idx:updated"

    def timers(self) -> str:
        """ZSET run id -> wake time (epoch ms) of runs waiting ``until`` a time."""
        return f"{self._g}timers"

    def leases(self) -> str:
        """ZSET run id -> lease expiry (epoch ms, Redis clock) of runs expecting a follow-up message
        (a tick, an effect task); the recovery sweep re-dispatches the expired ones."""
        return f"{self._g}leases"

    def dead_letters(self) -> str:
        """LIST of refused messages, newest first (JSON: task, args, reason, at), capped."""
        return f"{self._g}deadletter"

    def sweep_heartbeat(self) -> str:
        """STRING, the Redis time (epoch ms) of the last recovery sweep (``doctor``: is beat alive?)."""
        return f"{self._g}sweep"

    def heartbeats(self) -> str:
        """ZSET process id -> time of its last heartbeat (epoch ms, Redis clock), workers and beat
        (``workers/heartbeat.py``); entries older than an hour are dropped by the next heartbeat."""
        return f"{self._g}heartbeats"

    def heartbeat(self, process_id: str) -> str:
        """STRING, JSON details of one process's last heartbeat (kind, hostname, pid, queues);
        expires a few heartbeat periods after it was written."""
        return f"{self._g}heartbeat:{process_id}"

    def waiting_on(self, wait_key: str) -> str:
        """SET of the run ids waiting on one wait key (event delivery without a scan)."""
        return f"{self._g}wait:{wait_key}"

    # -- named waits (stores/redis/waits.py): entries "<run_id> <wait name>" -------------------

    def waits_open(self) -> str:
        """ZSET of every open named wait -> opened at (epoch ms)."""
        return f"{self._g}waits:open"

    def waits_of(self, assignee: str) -> str:
        """ZSET of the open named waits assigned to one user or group id -> deadline (epoch ms;
        a wait with none sorts after every deadline)."""
        return f"{self._g}waits:assignee:{assignee}"

    def waits_by_deadline(self) -> str:
        """ZSET of the open named waits that have a deadline -> deadline (epoch ms)."""
        return f"{self._g}waits:deadline"

    def waits_of_workflow(self, workflow_id: str) -> str:
        """ZSET of the open named waits of one workflow's runs -> opened at."""
        return f"{self._g}waits:workflow:{workflow_id}"

    def waits_under(self, root_run_id: str) -> str:
        """ZSET of the open named waits of a run and of every run below it -> opened at."""
        return f"{self._g}waits:root:{root_run_id}"

    def waits_keyed(self, wait_key: str) -> str:
        """SET of the open named waits an event with this wait key reaches."""
        return f"{self._g}waits:key:{wait_key}"

    # -- schedules (stores/redis/schedules.py) ------------------------------------------------

    def schedule(self, name: str) -> str:
        """STRING, JSON ``{"spec": Schedule.to_dict(), "state": {...}}`` of one schedule."""
        return f"{self._g}schedule:{name}"

    def schedules(self) -> str:
        """SET of the schedule names."""
        return f"{self._g}schedules"

    def schedules_due(self) -> str:
        """ZSET schedule name -> when its next fire is due (epoch ms); a paused one is not in it."""
        return f"{self._g}schedules:due"

    def events(self) -> str:
        """STREAM of every commit (run id, status, version), capped; followed with XREAD BLOCK.
        The stuck detector adds its own entries, with an ``event`` field (``run.stuck``,
        ``run.unstuck``, ``sla.breached``) and no ``status``."""
        return f"{self._g}events"

    # -- the stuck-run detector and SLA alerts (stores/redis/stuck.py, workers/stuck.py) ---------

    def stuck(self, cause: str) -> str:
        """ZSET run id -> since (epoch ms) of the runs the sweep found stuck for ``cause`` (an
        ``explain`` code); written and cleared by the sweep only."""
        return f"{self._g}stuck:{cause}"

    def stuck_runs(self) -> str:
        """HASH run id -> JSON of a stuck run (cause, since, sentence, workflow, version seen)."""
        return f"{self._g}stuck:runs"

    def stuck_looks(self) -> str:
        """ZSET run id -> when the detector looks at the run next (epoch ms, Redis clock)."""
        return f"{self._g}stuck:looks"

    def stuck_cursors(self) -> str:
        """HASH index name -> the highest score of it the detector has read (its window cursor)."""
        return f"{self._g}stuck:cursors"

    def sla_alerts(self) -> str:
        """HASH alert id (``<run_id> <rule>``) -> JSON of the SLA alert; one field per run and rule."""
        return f"{self._g}sla:alerts"

    def sla_outbox(self) -> str:
        """ZSET alert id -> when its action is due (epoch ms): pending and retried alert actions."""
        return f"{self._g}sla:outbox"

    # -- snapshots (stores/redis/snapshots.py) ----------------------------------------------------

    def snapshot(self, snapshot_id: str) -> str:
        """HASH of one snapshot: ``d`` (msgpack of ``Snapshot.to_dict()``), ``r`` (its run id)."""
        return f"{self.prefix}:snap:{snapshot_id}"

    def snapshots_by_created(self) -> str:
        """ZSET snapshot id -> created_at (epoch µs; ``-inf`` when unparseable), every snapshot."""
        return f"{self.prefix}:idx:snap:created"

    def snapshots_of_run(self, run_id: str) -> str:
        """SET of the ids of the snapshots taken of one run."""
        return f"{self.prefix}:idx:snap:run:{run_id}"

    # -- artifacts (stores/redis/artifacts.py) ----------------------------------------------------

    def artifact(self, artifact_id: str) -> str:
        """HASH of one artifact: ``m`` (msgpack metadata), ``c`` (inline bytes) or ``x`` (large-store id), ``r``."""
        return f"{self.prefix}:art:{artifact_id}"

    def artifacts_by_created(self) -> str:
        """ZSET artifact id -> created_at (epoch µs), every artifact."""
        return f"{self.prefix}:idx:art:created"

    def artifacts_of_run(self, run_id: str) -> str:
        """SET of the ids of the artifacts stored with one run id."""
        return f"{self.prefix}:idx:art:run:{run_id}"
