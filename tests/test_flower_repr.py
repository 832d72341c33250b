"""What Flower and ``celery inspect`` show for a message: the run, not a tuple of ids.

Messages are sent through the real dispatcher to the test's own redis-server and read back
raw from the broker; Flower and ``celery inspect`` show the ``argsrepr`` header.
"""

from __future__ import annotations

import uuid

import pytest
from kombu import Connection

from workers.app import TASK_NAMES, CeleryDispatcher, create_app

from support.celery_workers import WorkerGroup

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def deployment(redis_server, tmp_path):
    """A deployment with no worker: what is sent stays in the broker for the test to read."""
    g = WorkerGroup(redis_server.url, tmp_path / "g")
    yield g
    g.close()


def received(g: WorkerGroup, queue: str) -> list:
    """Every message waiting in ``queue``, taken off it: (task name, argsrepr, args)."""
    out = []
    with Connection(g.broker_url) as conn:
        q = conn.SimpleQueue(queue, no_ack=True, accept=["msgpack"])
        while True:
            try:
                message = q.get(timeout=0.5)
            except q.Empty:
                break
            out.append((message.headers["task"], message.headers["argsrepr"], message.decode()[0]))
        q.close()
    return out


def test_the_dispatcher_labels_each_message_with_run_workflow_node_and_version(deployment):
    settings = deployment.settings()
    app = create_app(settings, main=f"flower-{uuid.uuid4().hex[:6]}")
    dispatcher = CeleryDispatcher(app, settings)
    run_id = "f8f5ae60-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
    # Given a tick, an effect (second attempt, with a countdown) and a wake of one run
    dispatcher.tick(run_id, 4, workflow="deploy", node="ask")
    dispatcher.effect("llm", run_id, 5, "k-1", 2, countdown=0.2, workflow="deploy", node="think")
    dispatcher.wake(run_id, 6, countdown=0.2, workflow="deploy", node="sleep")
    # and a message sent without labels, for a run whose id is not a UUID
    dispatcher.tick("order-17", None)
    # I expect each message to read as the run for Flower, with its arguments unchanged
    assert received(deployment, settings.queue("ticks")) == [
        (TASK_NAMES["tick"], "run=f8f5ae60 wf=deploy node=ask v=4", [run_id, 4, 1]),
        (TASK_NAMES["tick"], "run=order-17", ["order-17", None, 1]),
    ]
    assert received(deployment, settings.queue("llm")) == [
        (TASK_NAMES["llm"], "run=f8f5ae60 wf=deploy node=think v=5 attempt=2", [run_id, 5, "k-1", 2]),
    ]
    assert received(deployment, settings.queue("timers")) == [
        (TASK_NAMES["wake"], "run=f8f5ae60 wf=deploy node=sleep v=6", [run_id, 6]),
    ]


def test_a_run_started_by_a_producer_is_labelled_too(deployment):
    # Given a producer that starts a run (its first tick goes to the broker; no worker runs)
    client = deployment.client()
    run_id = client.start("ask")
    # I expect the tick to name the run (a UUID's first 8 digits) and its version
    [(task, argsrepr, args)] = received(deployment, deployment.settings().queue("ticks"))
    assert task == TASK_NAMES["tick"] and args[0] == run_id
    assert argsrepr.startswith(f"run={run_id[:8]} ") and f"v={args[1]}" in argsrepr, argsrepr
