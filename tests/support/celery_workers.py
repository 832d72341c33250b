"""Real Celery worker and beat processes for the tests, on the test's own redis-server.

A :class:`WorkerGroup` is one deployment: a key prefix for the runs and a Redis database of
its own for the broker (so that a test may empty a queue without touching anyone else's).
Workers run ``python -m celery -A workers.app worker``, exactly as a user would, with the
settings in ``ABSTRACTRUNTIME_*`` variables and ``tests/support/celery_scenarios.py`` imported.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from workers.settings import QUEUE_KINDS

TESTS_DIR = Path(__file__).resolve().parents[1]  # tests/, on the workers' PYTHONPATH (support.* imports)
#: Seconds a worker or beat may take to say it is ready.
READY_TIMEOUT_S = 30.0
ALL_QUEUES = ",".join(QUEUE_KINDS)

#: Broker databases in use, per Redis server (base URL): a group takes one and gives it back,
#: emptied, when it closes (the test's own server only; 0 keeps the runs).
_dbs_in_use: dict[str, set[int]] = {}


def _take_db(base: str) -> int:
    used = _dbs_in_use.setdefault(base, set())
    free = [n for n in range(1, 16) if n not in used]
    if not free:
        raise RuntimeError("more open worker groups than Redis databases on one server")
    used.add(free[0])
    return free[0]


class WorkerGroup:
    """Workers and beat of one deployment; ``client()`` is a producer of the same deployment."""

    def __init__(self, redis_url: str, folder: Path, **settings: Any) -> None:
        base = redis_url.rsplit("/", 1)[0]
        db = self._db = _take_db(base)
        self._base = base
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.prefix = f"w{uuid.uuid4().hex[:10]}"
        self.broker_url = f"{base}/{db}"
        self.redis_url = redis_url
        self.env = {
            "ABSTRACTRUNTIME_REDIS_URL": redis_url,
            "ABSTRACTRUNTIME_REDIS_PREFIX": self.prefix,
            "ABSTRACTRUNTIME_BROKER_URL": self.broker_url,
            "ABSTRACTRUNTIME_IMPORTS": "support.celery_scenarios",
            "ABSTRACTRUNTIME_DATA_DIR": str(folder / "data"),
        }
        for name, value in settings.items():
            self.env[f"ABSTRACTRUNTIME_{name.upper()}"] = str(value)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._clients: list[Any] = []

    def _spawn(self, name: str, argv: list[str], ready: str) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_")}
        env.update(self.env)
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        log_path = self.folder / f"{name}.log"
        log = open(log_path, "ab")
        start = log_path.stat().st_size
        proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "workers.app", *argv], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs[name] = proc
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")
            with open(log_path, "rb") as f:
                f.seek(start)
                if ready.encode() in f.read():
                    return proc
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not get ready in {READY_TIMEOUT_S}s:\n{self.log(name)[-3000:]}")

    def start_worker(self, name: str = "w1", *, queues: str = ALL_QUEUES, pool: str = "solo",
                     concurrency: int = 1) -> subprocess.Popen[bytes]:
        """A worker consuming the queues of the given kinds (comma-separated; their names are settings)."""
        settings = self.settings()
        names = ",".join(settings.queue(kind) for kind in queues.split(","))
        argv = ["worker", "-n", f"{name}.{self.prefix}@%h", "-Q", names, "-P", pool, "-c", str(concurrency),
                "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO"]
        return self._spawn(name, argv, "ready.")

    def start_beat(self, name: str = "beat") -> subprocess.Popen[bytes]:
        return self._spawn(name, ["beat", "-l", "INFO", "--schedule", str(self.folder / "beat-schedule")],
                           "beat: Starting")

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, name: str, *, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def kill(self, name: str) -> None:
        """SIGKILL a worker (its whole process group: the pool's children too)."""
        self.stop(name, sig=signal.SIGKILL)

    def settings(self) -> Any:
        from workers.settings import WorkerSettings

        return WorkerSettings.from_env(self.env)

    def client(self) -> Any:
        from workers.client import Client

        client = Client(self.settings())
        self._clients.append(client)
        return client

    def broker(self) -> Any:
        import redis

        return redis.Redis.from_url(self.broker_url)

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)
        for client in self._clients:
            client.close()
        if self._db is not None:
            import redis

            own = redis.Redis.from_url(f"{self._base}/{self._db}")
            try:
                own.flushdb()  # this group's broker database, on the test's own server
            except redis.RedisError:
                pass  # the server is gone, or the test gave the broker another server
            finally:
                own.close()
            _dbs_in_use[self._base].discard(self._db)
            self._db = None
