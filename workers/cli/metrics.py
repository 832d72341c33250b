"""``abstractruntime metrics``: the Prometheus exporter (``docs/metrics.md``)."""

from __future__ import annotations

import errno
import os
import time
from typing import Any

import click

from ._common import EXIT_USAGE, CliError, State, _require_deployment, pass_state

__all__ = ["metrics"]


def serve(state: State, host: str, port: int) -> Any:
    """Start the exporter's HTTP server (a thread); returns it. CliError when the port is taken
    or ``prometheus_client`` is missing."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        raise CliError("the exporter needs prometheus_client: pip install 'abstractruntime-celery[metrics]'",
                       EXIT_USAGE) from None
    from ..fleet import BrokerProbe
    from ..metrics import FleetCollector, WorkerSeries

    registry = CollectorRegistry()
    folder = os.environ.get("ABSTRACTRUNTIME_METRICS_DIR")
    if folder:  # the worker processes write their series there, a folder per host
        registry.register(WorkerSeries(folder))
    client = state.client
    registry.register(FleetCollector(client.backend, state.settings, BrokerProbe(client.app, state.settings)))
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CliError(f"port {port} on {host} is in use (another exporter?); pick another with --port",
                           EXIT_USAGE) from None
        raise CliError(f"cannot listen on {host}:{port}: {exc}", EXIT_USAGE) from None
    return server


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=9464, show_default=True)
@pass_state
def metrics(state: State, host: str, port: int) -> None:
    """Serve Prometheus metrics: the workers' series (ABSTRACTRUNTIME_METRICS_DIR) and the fleet's
    gauges read from Redis at each scrape. Runs in the foreground; run one per host."""
    _require_deployment(state)
    server = serve(state, host, port)
    click.echo(f"serving metrics on http://{host}:{server.server_port}/metrics", err=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()
