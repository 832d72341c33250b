"""Chaos: a mixed workload on real workers while workers, Redis and messages are made to fail.

Marked ``chaos`` (``pytest -m chaos``); ``--long`` runs more runs for longer. The harness
starts its own redis-server (append-only file, ``appendfsync always``), two prefork workers,
beat and a producer, then runs node chains with an LLM call, agents (LLM, tools, a question
the producer answers), timers, sync and async child workflows and cancellations, while a
fault thread injects, at random moments:

* SIGKILL of a whole worker (master and pool), restarted a moment later;
* SIGKILL of redis-server, restarted on its append-only file (the broker is the same server,
  so messages in flight are lost or redelivered with it);
* a worker stopped (SIGSTOP) past the lease, so its work is sent again to the other, then
  resumed (SIGCONT): its late commit must be refused;
* duplicate delivery of every task kind (tick, effect, wake, sweep), sent on purpose.

At the end, for every run: it ended as it should, no version was committed twice (from
the events stream, one event per commit), no idempotency key has two completed records,
its chain verifies, and no lease or timer is left over. The table it prints is the figure
of the note; every loss and duplicate column must be zero.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from runtime import RunStatus

from support.celery_workers import WorkerGroup
from support.redis_server import RedisServer

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(1500)]

KINDS = ["crashy", "agent", "sleep", "parent_sync", "parent_async", "cancel"]


def _until(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat()


class Faults:
    def __init__(self, server: RedisServer, group: WorkerGroup, client, rng: random.Random, lease_s: float) -> None:
        self.server, self.group, self.client, self.rng, self.lease_s = server, group, client, rng, lease_s
        self.count: collections.Counter[str] = collections.Counter()
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.redis_restarts_left = 2

    def run(self) -> None:
        try:
            while not self.stop.wait(self.rng.uniform(0.8, 2.0)):
                fault = self.rng.choice(["kill_worker", "duplicate", "duplicate", "sigstop", "kill_redis"])
                getattr(self, fault)()
        except Exception as exc:  # reported by the test, not lost in a thread
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def kill_worker(self) -> None:
        name = self.rng.choice(["a", "b"])
        self.group.kill(name)
        self.count["worker SIGKILL"] += 1
        time.sleep(self.rng.uniform(0.1, 1.0))
        self.group.start_worker(name, pool="prefork", concurrency=1)

    def kill_redis(self) -> None:
        if self.redis_restarts_left <= 0:
            return self.duplicate()
        self.redis_restarts_left -= 1
        self.server.kill()
        self.count["redis SIGKILL + restart"] += 1
        time.sleep(0.3)
        self.server.restart()

    def sigstop(self) -> None:
        name = self.rng.choice(["a", "b"])
        proc = self.group.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGSTOP)
        self.count["worker SIGSTOP past the lease"] += 1
        time.sleep(self.lease_s + 1.5)
        os.killpg(proc.pid, signal.SIGCONT)

    def duplicate(self) -> None:
        backend = self.client.backend
        ids = [i.decode() for i in backend.client.zrange(backend.keys.by_updated(), -50, -1)]
        if not ids:
            return
        rid = self.rng.choice(ids)
        loaded = backend.load_for_driver(rid)
        if loaded is None:
            return
        v, d = loaded.version, loaded.dispatch
        dispatcher = self.client.engine.dispatcher
        if d is not None and d.kind == "effect" and d.pending is not None:
            dispatcher.effect(d.queue or "ticks", rid, v, d.pending.idempotency_key, d.pending.attempt)
            self.count["duplicate effect message"] += 1
        else:
            dispatcher.tick(rid, v)
            dispatcher.wake(rid, None)
            self.count["duplicate tick + wake messages"] += 1
        # An extra sweep too (as a second beat would send): claims make it harmless.
        self.client.app.send_task("abstractruntime.sweep", queue=self.client.settings.queue("maintenance"))
        self.count["extra sweep messages"] += 1


def _start_one(client, kind: str, rng: random.Random) -> str:
    workflow = {"crashy": "crashy", "agent": "agent", "sleep": "sleep_until", "parent_sync": "parent_sync",
                "parent_async": "parent_async", "cancel": "ask"}[kind]
    vars = {"until": _until(rng.uniform(1, 4))} if kind == "sleep" else {}
    return client.start(workflow, vars=vars)


def _serve(client, kind_of: dict[str, str], open_runs: set[str], answered: set[str]) -> None:
    """The producer's part: answer questions, cancel the runs meant to be cancelled."""
    for rid in sorted(open_runs):
        try:
            state = client.get_state(rid)
            asks = state.status == RunStatus.WAITING and state.waiting and state.waiting.prompt
            if asks and rid not in answered:
                if kind_of[rid] == "cancel":
                    client.cancel(rid, reason="chaos")
                else:
                    client.respond(rid, "yes")
                answered.add(rid)
            elif state.status.is_terminal:
                open_runs.discard(rid)
        except Exception:  # Redis is being restarted: again next round
            continue


@pytest.mark.parametrize("mode", ["queued", "default", "inline"])
def test_chaos(tmp_path, request, mode):
    long = request.config.getoption("--long")
    duration = 600.0 if long else 60.0
    seed = int(os.environ.get("CHAOS_SEED", time.time()))
    rng = random.Random(seed)
    lease_s = 2.0
    server = RedisServer(tmp_path / "redis").start(appendonly=True, appendfsync="always")
    # inline: every effect runs in the task that asked for it, 16 steps a task (workers/engine/inline.py);
    # default: ticks continue in their task, effects go to their queues; queued: every step its own task
    inline = {"inline": {"steps_per_task": 16, "inline_effects": "tools,llm,subworkflows"}, "default": {},
              "queued": {"steps_per_task": 1}}[mode]
    group = WorkerGroup(server.url, tmp_path / "g", tick_lease_s=lease_s, effect_lease_s=lease_s,
                        sweep_period_s=0.5, tick_backoff_s=0.05, timer_hold_s=1, **inline)
    faults = None
    try:
        group.start_worker("a", pool="prefork", concurrency=1)
        group.start_worker("b", pool="prefork", concurrency=1)
        group.start_beat()
        client = group.client()
        kind_of: dict[str, str] = {}
        open_runs: set[str] = set()
        answered: set[str] = set()
        faults = Faults(server, group, client, rng, lease_s)
        thread = threading.Thread(target=faults.run, daemon=True)
        thread.start()
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < duration:  # new work all along, faults all along
            for _ in range(2):
                try:
                    rid = _start_one(client, KINDS[i % len(KINDS)], rng)
                except Exception:  # Redis restarting: start it next round
                    continue
                kind_of[rid] = KINDS[i % len(KINDS)]
                open_runs.add(rid)
                i += 1
            _serve(client, kind_of, open_runs, answered)
            time.sleep(0.5)
        faults.stop.set()
        thread.join(60)
        drain = time.monotonic() + 180
        while open_runs and time.monotonic() < drain:
            _serve(client, kind_of, open_runs, answered)
            time.sleep(0.2)
        took = time.monotonic() - t0
        # Let the last sweeps finish the children and notifications.
        time.sleep(lease_s + 1)

        backend = client.backend
        k = backend.keys
        children = [i.decode() for rid in kind_of for i in backend.client.smembers(k.children(rid))]
        everything = list(kind_of) + children
        lost = [rid for rid in everything if not client.get_state(rid).status.is_terminal]
        wrong = []
        for rid, kind in kind_of.items():
            state = client.get_state(rid)
            expected = RunStatus.CANCELLED if kind == "cancel" else RunStatus.COMPLETED
            if state.status.is_terminal and state.status != expected:
                wrong.append((rid, kind, state.status.value, state.error))
        seen: collections.Counter[tuple[str, str]] = collections.Counter()
        for _id, fields in backend.client.xrange(k.events()):
            if b"v" not in fields:
                continue  # not a commit (run.stuck, sla.breached...)
            seen[(fields[b"run_id"].decode(), fields[b"v"].decode())] += 1
        dup_transitions = sum(n - 1 for (rid, _v), n in seen.items() if n > 1 and rid in set(everything))
        dup_effects = 0
        chain_failures = 0
        for rid in everything:
            ledger = client.get_ledger(rid)
            keys = collections.Counter(r["idempotency_key"] for r in ledger
                                       if r["status"] == "completed" and r["idempotency_key"])
            dup_effects += sum(n - 1 for n in keys.values() if n > 1)
            chain_failures += 0 if client.verify(rid)["ok"] else 1
        leftover = [rid for rid in everything if backend.client.zscore(k.leases(), rid) is not None
                    or backend.client.zscore(k.timers(), rid) is not None]
        dead = backend.client.llen(k.dead_letters())
        crashy_ok = all(client.get_state(r).output == {"visited": 2, "llm": {"content": "olleh", "attempt": 1}}
                        for r, kind in kind_of.items() if kind == "crashy" and r not in lost)

        rows = [("effects", mode), ("runs (and children)", f"{len(kind_of)} ({len(children)})"), ("seed", seed),
                ("seconds", f"{took:.0f}")]
        rows += [(f"faults: {name}", n) for name, n in sorted(faults.count.items())]
        rows += [("runs lost", len(lost)), ("runs ended wrongly", len(wrong)),
                 ("duplicate transitions", dup_transitions), ("duplicate effects", dup_effects),
                 ("chain failures", chain_failures), ("leftover leases or timers", len(leftover)),
                 ("dead letters", dead)]
        width = max(len(r[0]) for r in rows)
        print("\n" + "\n".join(f"  {name:<{width}}  {value}" for name, value in rows))
        assert not faults.errors, faults.errors
        assert sum(faults.count.values()) >= 5, faults.count
        assert lost == [] and wrong == [], (lost, wrong)
        assert dup_transitions == dup_effects == chain_failures == 0
        assert leftover == [] and dead == 0 and crashy_ok
    finally:
        if faults is not None:
            faults.stop.set()
        for name in list(group.procs):
            proc = group.procs.get(name)
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        group.close()
        server.stop()
