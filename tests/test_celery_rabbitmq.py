"""RabbitMQ as the broker while Redis keeps the runs.

Uses the RabbitMQ on 127.0.0.1:5672 (guest/guest) when one answers there
(``ABSTRACTRUNTIME_TEST_AMQP_URL`` names another); skipped, saying so, when none does.
Queue names are unique to the test and deleted afterwards.
"""

from __future__ import annotations

import os
import socket
import uuid
from urllib.parse import urlparse

import pytest

from runtime import RunStatus

from support.celery_workers import WorkerGroup

AMQP_URL = os.environ.get("ABSTRACTRUNTIME_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _reachable(url: str) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 5672), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.mark.timeout(120)
def test_runs_complete_with_rabbitmq_as_the_broker(redis_server, tmp_path):
    if not _reachable(AMQP_URL):
        pytest.skip(f"RabbitMQ is not reachable at {urlparse(AMQP_URL).hostname}:{urlparse(AMQP_URL).port or 5672}; "
                    "set ABSTRACTRUNTIME_TEST_AMQP_URL to run this test")
    tag = uuid.uuid4().hex[:8]
    queues = {f"queue_{k}": f"t{tag}-{k}" for k in ("ticks", "llm", "tools", "subworkflows", "timers",
                                                     "maintenance")}
    g = WorkerGroup(redis_server.url, tmp_path / "g", **queues)
    g.env["ABSTRACTRUNTIME_BROKER_URL"] = AMQP_URL
    try:
        g.start_worker("w")
        g.start_beat()
        client = g.client()
        assert client.app.conf.broker_url.startswith("amqp://")
        run_id = client.start("agent")
        assert client.wait_for(run_id, timeout=60).status == RunStatus.WAITING
        client.respond(run_id, "yes")
        state = client.wait_for(run_id, ["completed", "failed"], timeout=60)
        assert state.status == RunStatus.COMPLETED and state.output["sum"] == 5
        parent = client.wait_for(client.start("parent_sync"), ["completed", "failed"], timeout=60)
        assert parent.status == RunStatus.COMPLETED
        assert client.verify(run_id)["ok"]
    finally:
        g.close()
        from kombu import Connection

        with Connection(AMQP_URL) as conn:
            channel = conn.channel()
            for name in queues.values():
                try:
                    channel.queue_delete(name)
                except Exception:  # a queue nobody declared
                    channel = conn.channel()
