"""Hostile input: random and malformed task messages and client calls, and pickled messages.

Every bad message must end as a typed refusal in the dead-letter list with its reason,
never as a crash or a hang, and stored runs must not change.
"""

from __future__ import annotations

import os
import pickle
import time
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import RunStatus
from runtime.errors import AbstractRuntimeError

import support.celery_scenarios  # noqa: F401  (workflows)
from support.celery_workers import WorkerGroup

TASKS = ["abstractruntime.tick", "abstractruntime.wake", "abstractruntime.sweep", "abstractruntime.effect",
         "abstractruntime.effect.llm", "abstractruntime.effect.tools", "abstractruntime.effect.subworkflow"]


@pytest.fixture(scope="module")
def deployment(redis_server, tmp_path_factory):
    """A producer and the app's tasks, run in this process against the test's Redis (no worker)."""
    g = WorkerGroup(redis_server.url, tmp_path_factory.mktemp("fuzz"))
    client = g.client()
    # Runs in states no message may move: ended, and waiting for a person.
    done = client.start("chain")
    client.engine.tick(done)
    for _ in range(10):
        if client.engine.tick(done) != "next":
            break
    asking = client.start("ask")
    client.engine.tick(asking)
    assert client.get_state(done).status == RunStatus.COMPLETED
    assert client.get_state(asking).status == RunStatus.WAITING
    yield g, client, [done, asking]
    g.close()


def snapshot(client, run_ids: list[str]) -> list[Any]:
    k = client.backend.keys
    return [(client.backend.client.hgetall(k.run(r)), client.backend.client.xlen(k.ledger(r))) for r in run_ids]


_junk = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                  st.text(max_size=300), st.binary(max_size=50),
                  st.lists(st.integers(), max_size=5), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_task_messages_are_refused_or_harmless(deployment, data):
    _g, client, runs = deployment
    app = client.app
    before = snapshot(client, runs)
    name = data.draw(st.sampled_from(TASKS))
    run_id = data.draw(st.one_of(st.sampled_from(runs), st.text(max_size=250), _junk))
    rest = data.draw(st.lists(st.one_of(_junk, st.integers(0, 5), st.sampled_from(["k" * 32, "x"])), max_size=5))
    args = [run_id, *rest] if data.draw(st.booleans()) else rest
    result = app.tasks[name](*args)  # runs the task here, as a worker would
    assert isinstance(result, (str, dict)), result
    assert snapshot(client, runs) == before


def test_malformed_messages_are_in_the_dead_letter_list_with_their_reason(deployment):
    _g, client, runs = deployment
    app = client.app
    cases = [
        ("abstractruntime.tick", (), "0 arguments, expected 1 to 4"),
        ("abstractruntime.tick", (42,), "run id of type int"),
        ("abstractruntime.tick", ("../../etc/passwd",), "../../etc/passwd"),
        ("abstractruntime.tick", (runs[0], "v1"), "version 'v1' is not a whole number"),
        ("abstractruntime.effect.llm", (runs[0], 1, "", 1), "idempotency key"),
        ("abstractruntime.effect.llm", (runs[0], 1, "k", 10**6), "attempt 1000000"),
        ("abstractruntime.tick", (runs[0], 1, 1, "7"), "fencing token '7' is not a whole number"),
        ("abstractruntime.effect.llm", (runs[0], 1, "k", 1, -1), "fencing token -1 is not a whole number"),
        ("abstractruntime.wake", ("a" * 500,), "Invalid run_id"),
    ]
    for name, args, reason in cases:
        assert app.tasks[name](*args) == "rejected", (name, args)
        newest = client.engine.dead_letters(limit=1)[0]
        assert reason in newest["reason"], (reason, newest)
        assert newest["task"] in name


def test_a_run_whose_state_no_longer_decodes_is_dead_lettered_and_not_sent_again(deployment):
    _g, client, _runs = deployment
    run_id = client.start("ask")
    k = client.backend.keys
    client.backend.client.hset(k.run(run_id), "s", b"\xc1 not msgpack")
    assert client.backend.client.zscore(k.leases(), run_id) is not None
    assert client.app.tasks["abstractruntime.tick"](run_id) == "rejected"
    newest = client.engine.dead_letters(limit=1)[0]
    assert "CorruptRecordError" in newest["reason"] and run_id in newest["reason"]
    assert client.backend.client.zscore(k.leases(), run_id) is None  # the sweep leaves it alone now


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(run_id=st.one_of(st.text(max_size=50), st.just("")), key=st.text(max_size=50),
       payload=st.recursive(st.one_of(st.none(), st.integers(), st.text(max_size=20), st.floats()),
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                          max_size=3),
                            max_leaves=20))
def test_random_client_calls_get_typed_errors_and_change_nothing(deployment, run_id, key, payload):
    _g, client, runs = deployment
    before = snapshot(client, runs)
    for call in (lambda: client.resume(run_id, wait_key=key, payload=payload),
                 lambda: client.emit(key or "nobody-waits-here", payload),
                 lambda: client.start(run_id or "no-such-workflow", vars={"p": payload}),
                 lambda: client.cancel(run_id)):
        try:
            call()
        except (AbstractRuntimeError, ValueError, TypeError, KeyError):
            pass
    assert snapshot(client, runs) == before


def test_deep_and_huge_payloads_are_refused_before_anything_is_written(deployment):
    _g, client, runs = deployment
    asking = runs[1]
    before = snapshot(client, runs)
    deep: Any = "x"
    for _ in range(2000):
        deep = [deep]
    with pytest.raises(AbstractRuntimeError, match="nesting deeper"):
        client.respond(asking, deep)
    with pytest.raises(AbstractRuntimeError, match="over the limit"):
        client.respond(asking, "x" * (17 * 1024 * 1024))
    assert snapshot(client, runs) == before


@pytest.mark.timeout(120)
def test_a_pickled_message_is_refused_and_never_unpickled(redis_server, tmp_path):
    """A worker given a pickle message does not deserialize it: the payload that would create
    a file when unpickled creates none, the worker stays up, and a real message still works."""
    from kombu import Connection, Exchange, Producer

    g = WorkerGroup(redis_server.url, tmp_path / "g")
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    try:
        g.start_worker("w")
        client = g.client()
        with Connection(g.broker_url) as conn:
            producer = Producer(conn.channel(), exchange=Exchange("ticks", type="direct"), routing_key="ticks")
            body = pickle.dumps(((Exploit(),), {}, {}))
            producer.publish(body, content_type="application/x-python-serialize", content_encoding="binary",
                             headers={"task": "abstractruntime.tick", "id": str(uuid.uuid4()), "lang": "py",
                                      "argsrepr": "", "kwargsrepr": ""}, serializer=None)
            producer.publish(b"\xc1\xc1 not msgpack", content_type="application/x-msgpack",
                             content_encoding="binary", headers={"task": "abstractruntime.tick",
                                                                 "id": str(uuid.uuid4()), "lang": "py"})
        run_id = client.start("chain")  # the worker is still up and serves real messages
        assert client.wait_for(run_id, ["completed"], timeout=30).output == {"visited": 5}
        time.sleep(0.5)
        assert not marker.exists()
        log = g.log("w")
        assert "ContentDisallowed" in log or "content type" in log.lower() or "Refusing" in log
    finally:
        g.close()
