"""The deployment files: docker-compose.yml is valid, and every command in it runs.

Docker is needed only to validate the file (skipped, saying which client is missing, when
there is no Compose client). The commands of the services built from the Dockerfile
(workers, beat, Flower) are run on this machine, from the virtualenv, with the environment
the compose file gives them, pointed at a redis-server of the test's own.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.redis_server import RedisServer, free_port

REPO = Path(__file__).resolve().parent.parent
TESTS_DIR = Path(__file__).resolve().parent
COMPOSE_FILE = REPO / "docker-compose.yml"
#: The services that run the project's image, and what each must print once it is up.
APP_SERVICES = {
    "worker-ticks": "ready.",
    "worker-effects": "ready.",
    "worker-timers": "ready.",
    "beat": "beat: Starting",
    "flower": None,  # checked over HTTP
}
#: Seconds every process must stay up.
STAY_UP_S = 5.0
#: Seconds a process may take to say it is ready, and to stop after SIGTERM.
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
_DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")


def _load() -> dict[str, Any]:
    with open(COMPOSE_FILE, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _defaults(text: str) -> str:
    """``${VAR:-default}`` -> ``default`` (what Compose does with VAR unset), ``$$`` -> ``$``."""
    out = _DEFAULTED.sub(lambda m: m.group(2), str(text))
    assert "${" not in out, f"a variable without a default in {text!r}"
    return out.replace("$$", "$")


def _argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    if isinstance(command, str):
        return shlex.split(_defaults(command))
    return [_defaults(part) for part in command]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {name: _defaults(value) for name, value in env.items()}


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


def _compose_client() -> tuple[list[str] | None, str]:
    """The Compose client's argv, or None and a sentence saying what was looked for."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60, check=False)
        if probe.returncode == 0:
            return [docker, "compose"], ""
    legacy = shutil.which("docker-compose")
    if legacy is not None:
        return [legacy], ""
    if docker is None:
        return None, "no Compose client: neither `docker` nor `docker-compose` is on PATH"
    return None, (f"no Compose client: `{docker}` has no compose plugin (`docker compose version` failed) "
                  "and no `docker-compose` is on PATH")


@pytest.mark.timeout(120)
def test_compose_file_is_accepted_by_docker_compose():
    client, missing = _compose_client()
    if client is None:
        pytest.skip(missing)
    out = subprocess.run([*client, "-f", str(COMPOSE_FILE), "config", "-q"], cwd=REPO, capture_output=True,
                         text=True, timeout=90, check=False)
    assert out.returncode == 0, f"{' '.join(client)} config -q refused the file:\n{out.stderr}{out.stdout}"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL it after STOP_TIMEOUT_S; return once the group is empty."""
    if _group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    # The pool's children too: nothing of the group may outlive the test.
    for sig in (None, signal.SIGKILL):
        if sig is not None and _group_alive(proc.pid):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + 5
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert not _group_alive(proc.pid), f"process group {proc.pid} ({proc.args[0]}) still has processes"


def _flower_answers(port: int, user: str, password: str) -> tuple[int | None, int | None]:
    """HTTP status of Flower's front page without and with the credentials (None: no answer)."""
    url = f"http://127.0.0.1:{port}/"
    statuses: list[int | None] = []
    for auth in (None, f"{user}:{password}"):
        request = urllib.request.Request(url)
        if auth is not None:
            request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                statuses.append(response.status)
        except urllib.error.HTTPError as exc:
            statuses.append(exc.code)
            exc.close()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            statuses.append(None)
    return statuses[0], statuses[1]


@pytest.mark.timeout(240)
def test_each_service_command_starts_and_stays_up(tmp_path):
    compose = _load()
    assert "version" not in compose
    services = compose["services"]

    # The Redis service keeps its data and asks for a password.
    redis_command = services["redis"]["command"]
    assert "--appendonly yes" in redis_command and "--requirepass" in redis_command
    # Flower: basic auth, and published on this host only.
    assert "--basic-auth" in services["flower"]["command"]
    assert services["flower"]["ports"] and all(str(p).startswith("127.0.0.1:") for p in services["flower"]["ports"])
    # Every service of the image is here, and nothing else is built.
    built = {name for name, service in services.items() if "build" in service}
    assert built == set(APP_SERVICES), built
    assert _environment(services["worker-effects"])["ABSTRACTRUNTIME_PREFETCH"] == "1"

    bin_dir = Path(sys.executable).parent
    password = f"pw-{uuid.uuid4().hex[:8]}"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = {name: tmp_path / f"{name}.log" for name in APP_SERVICES}
    flower_port = free_port()
    flower_auth: tuple[str, str] | None = None
    with RedisServer(tmp_path / "redis").start(password=password) as srv:
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_")}
        prefix = f"c{uuid.uuid4().hex[:10]}"
        try:
            for name in APP_SERVICES:
                service = services[name]
                argv = _argv(service)
                program = Path(sys.executable).with_name(argv[0])
                assert program.is_file(), f"{name}: {argv[0]} is not installed in {bin_dir}"
                argv[0] = str(program)
                if name == "flower":
                    assert "--port=5555" in argv, argv
                    argv = [f"--port={flower_port}" if a == "--port=5555" else a for a in argv]
                    argv.append("--address=127.0.0.1")  # not on the machine's public interfaces
                    auth = next(a for a in argv if a.startswith("--basic-auth="))
                    user, _, secret = auth.split("=", 1)[1].partition(":")
                    flower_auth = (user, secret)
                env = dict(base_env)
                env.update(_environment(service))
                env.update({
                    "ABSTRACTRUNTIME_REDIS_URL": srv.url,
                    "ABSTRACTRUNTIME_REDIS_PREFIX": prefix,
                    "ABSTRACTRUNTIME_IMPORTS": "support.celery_scenarios",
                    "ABSTRACTRUNTIME_DATA_DIR": str(tmp_path / "data"),
                    # In Compose every container has its own host name; here they share one.
                    "ABSTRACTRUNTIME_WORKER_NAME": f"{name}@%h",
                    "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                })
                with open(logs[name], "wb") as log:
                    procs[name] = subprocess.Popen(argv, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

            # Each one stays up.
            deadline = time.monotonic() + STAY_UP_S
            while time.monotonic() < deadline:
                for name, proc in procs.items():
                    if proc.poll() is not None:
                        pytest.fail(f"{name} ({' '.join(proc.args)}) exited with {proc.returncode} within "
                                    f"{STAY_UP_S}s; its log:\n{_tail(logs[name])}")
                time.sleep(0.1)

            # And is up for real: connected, consuming, serving.
            deadline = time.monotonic() + READY_TIMEOUT_S
            waiting = dict(APP_SERVICES)
            flower_status: tuple[int | None, int | None] = (None, None)
            while waiting:
                for name, marker in list(waiting.items()):
                    proc = procs[name]
                    if proc.poll() is not None:
                        pytest.fail(f"{name} exited with {proc.returncode}; its log:\n{_tail(logs[name])}")
                    if marker is not None:
                        if marker in logs[name].read_text(errors="replace"):
                            del waiting[name]
                    else:
                        assert flower_auth is not None
                        flower_status = _flower_answers(flower_port, *flower_auth)
                        if None not in flower_status:
                            del waiting[name]
                if not waiting:
                    break
                if time.monotonic() > deadline:
                    pytest.fail(f"not ready within {READY_TIMEOUT_S}s: {', '.join(waiting)}\n"
                                + "\n".join(f"--- {n}:\n{_tail(logs[n], 1500)}" for n in waiting))
                time.sleep(0.2)
            assert flower_status == (401, 200), flower_status
            for name in ("worker-ticks", "worker-effects", "worker-timers"):
                assert "task events: ON" in logs[name].read_text(errors="replace"), f"{name}: --events not applied"
            for name, proc in procs.items():
                assert proc.poll() is None, f"{name} exited:\n{_tail(logs[name])}"
        finally:
            left = []
            for name, proc in procs.items():
                try:
                    _stop(proc)
                except (AssertionError, OSError, subprocess.TimeoutExpired) as exc:
                    left.append(f"{name}: {exc}")
            assert not left, "processes left behind: " + "; ".join(left)


def test_the_observability_profile_is_wired(tmp_path):
    """The services of ``--profile observability`` point at each other as their files say (no
    Docker needed), and the exporter's command, run here, serves the metrics."""
    services = _load()["services"]
    for name in ("metrics", "otel-collector", "prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"], name
    # Prometheus scrapes the exporter by its service name and the port its command serves on
    argv = _argv(services["metrics"])
    port = argv[argv.index("--port") + 1]
    prometheus = yaml.safe_load((REPO / "observability" / "prometheus.yml").read_text())
    targets = [t for job in prometheus["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"metrics:{port}"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]}
    assert mounted["/etc/prometheus/prometheus.yml"] == "./observability/prometheus.yml"
    # the collector takes OTLP/HTTP on 4318 (the endpoint docs/tracing.md gives the workers) into a traces pipeline
    collector = yaml.safe_load((REPO / "observability" / "otel-collector.yml").read_text())
    assert collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    assert "otlp" in collector["service"]["pipelines"]["traces"]["receivers"]
    assert services["otel-collector"]["command"] == ["--config=/etc/otelcol/config.yaml"]
    assert "./observability/otel-collector.yml:/etc/otelcol/config.yaml:ro" in services["otel-collector"]["volumes"]
    assert "http://otel-collector:4318" in (REPO / "docs" / "tracing.md").read_text()
    # Grafana: Prometheus as its data source, and the dashboard folder where the provider reads
    grafana_mounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    provisioning = REPO / grafana_mounts["/etc/grafana/provisioning"].removeprefix("./")
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090" and "prometheus" in services
    [provider] = yaml.safe_load((provisioning / "dashboards" / "abstractruntime.yml").read_text())["providers"]
    dashboards = REPO / grafana_mounts[provider["options"]["path"]].removeprefix("./")
    assert (dashboards / "abstractruntime.json").is_file()
    # the workers and the exporter share the series' volume
    assert "metrics-data:/metrics" in services["metrics"]["volumes"]
    assert "metrics-data:/metrics" in services["worker-ticks"]["volumes"]

    # The exporter's command, with the environment the file gives it, serves /metrics
    program = Path(sys.executable).with_name(argv[0])
    local_port = free_port()
    argv = [str(program), *[("127.0.0.1" if a == "0.0.0.0" else str(local_port) if a == port else a)
                            for a in argv[1:]]]
    with RedisServer(tmp_path / "redis").start() as srv:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_")}
        env.update(_environment(services["metrics"]))
        env.update(ABSTRACTRUNTIME_REDIS_URL=srv.url, ABSTRACTRUNTIME_METRICS_DIR=str(tmp_path / "metrics"),
                   ABSTRACTRUNTIME_DATA_DIR=str(tmp_path / "data"))
        log = tmp_path / "metrics.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            deadline, body = time.monotonic() + READY_TIMEOUT_S, ""
            while time.monotonic() < deadline and not body:
                assert proc.poll() is None, _tail(log)
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{local_port}/metrics", timeout=2) as response:
                        body = response.read().decode()
                except OSError:
                    time.sleep(0.2)
            assert "abstractruntime_runs" in body and "abstractruntime_trace_spans_dropped" in body, _tail(log)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(STOP_TIMEOUT_S)
