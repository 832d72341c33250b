"""Settings, registry and app configuration of the Celery driver (no worker process needed)."""

from __future__ import annotations

import time

import pytest

from runtime import Effect, EffectType, StepPlan, WorkflowSpec
from workers.registry import Registry
from workers.settings import WorkerSettings


def test_settings_from_env_and_their_errors():
    s = WorkerSettings.from_env({
        "ABSTRACTRUNTIME_BROKER_URL": "amqp://guest:secret@rabbit:5672//",
        "ABSTRACTRUNTIME_IMPORTS": "a.b, c ,",
        "ABSTRACTRUNTIME_QUEUE_LLM": "gpu-llm",
        "ABSTRACTRUNTIME_TICK_LEASE_S": "2.5",
        "ABSTRACTRUNTIME_NODES_PER_TICK": "16",
        "ABSTRACTRUNTIME_ACK_EMULATION": "yes",
        "ABSTRACTRUNTIME_REDIS_PREFIX": "prod",
    })
    assert s.imports == ("a.b", "c") and s.queue("llm") == "gpu-llm" and s.queue("ticks") == "ticks"
    assert s.tick_lease_s == 2.5 and s.nodes_per_tick == 16 and s.ack_emulation is True
    assert s.redis.prefix == "prod"
    assert "secret" not in s.describe_broker() and "***" in s.describe_broker()
    defaults = WorkerSettings()
    assert defaults.ack_emulation is False and defaults.nodes_per_tick == 1 and defaults.broker_url is None
    for var, value, message in [
        ("ABSTRACTRUNTIME_TICK_LEASE_S", "soon", "ABSTRACTRUNTIME_TICK_LEASE_S must be a number"),
        ("ABSTRACTRUNTIME_TICK_LEASE_S", "0", "ABSTRACTRUNTIME_TICK_LEASE_S: .*above 0"),
        ("ABSTRACTRUNTIME_NODES_PER_TICK", "0", "ABSTRACTRUNTIME_NODES_PER_TICK: .*1 or more"),
        ("ABSTRACTRUNTIME_ACK_EMULATION", "maybe", "ABSTRACTRUNTIME_ACK_EMULATION must be true or false"),
        ("ABSTRACTRUNTIME_QUEUE_TICKS", "my ticks", "ABSTRACTRUNTIME_QUEUE_TICKS: .*without spaces"),
        ("ABSTRACTRUNTIME_BROKER_URL", "localhost", "ABSTRACTRUNTIME_BROKER_URL: .*must be a URL"),
    ]:
        with pytest.raises(ValueError, match=message):
            WorkerSettings.from_env({var: value})
    with pytest.raises(ValueError, match="unknown queue kind 'gpu'"):
        defaults.queue("gpu")


def test_registry_refuses_bad_registrations():
    reg = Registry()
    with pytest.raises(TypeError, match="WorkflowSpec"):
        reg.register_workflow("not a spec")  # type: ignore[arg-type]
    wf = WorkflowSpec(workflow_id="w", entry_node="a", nodes={"a": lambda run, ctx: StepPlan(node_id="a")})
    reg.register_workflow(wf)
    with pytest.raises(ValueError, match="already registered"):
        reg.register_workflow(wf)
    reg.register_workflow(wf, replace=True)

    def add(a, b):
        return a + b

    reg.register_tool("add", add)
    reg.register_tool("add", add)  # the same function again is fine
    with pytest.raises(ValueError, match="tool 'add' is already registered"):
        reg.register_tool("add", lambda a, b: 0)
    with pytest.raises(ValueError, match="not callable"):
        reg.register_tool("x", 3)  # type: ignore[arg-type]
    with pytest.raises(ImportError, match="no_such_module_xyz.*ABSTRACTRUNTIME_IMPORTS"):
        reg.import_modules(["no_such_module_xyz"])
    assert EffectType.TOOL_CALLS in reg.effect_handlers


def test_tool_calls_report_errors_per_call():
    from runtime import RunState

    reg = Registry()
    reg.register_tool("add", lambda a, b: a + b)
    reg.register_tool("boom", lambda: 1 / 0)
    run = RunState.new(workflow_id="w", entry_node="a")

    def execute_tool_calls(tools, effect):
        return reg.effect_handlers[EffectType.TOOL_CALLS](run, effect, None)

    tools = reg.tools
    effect = Effect(type=EffectType.TOOL_CALLS, payload={"tool_calls": [
        {"name": "add", "arguments": {"a": 1, "b": 2}, "call_id": 7},
        {"name": "boom", "arguments": {}},
        {"name": "nope"},
    ]})
    outcome = execute_tool_calls(tools, effect)
    assert outcome.status == "completed"
    assert outcome.result == {"mode": "executed", "results": [
        {"call_id": "7", "name": "add", "success": True, "output": 3, "error": None},
        {"call_id": "", "name": "boom", "success": False, "output": None, "error": "division by zero"},
        {"call_id": "", "name": "nope", "success": False, "output": None, "error": "Tool 'nope' not found"},
    ]}
    bad = execute_tool_calls(tools, Effect(type=EffectType.TOOL_CALLS, payload={"tool_calls": "add"}))
    assert bad.status == "failed" and bad.error == "tool_calls requires payload.tool_calls (list)"


def test_the_app_accepts_msgpack_only_and_routes_each_kind_to_its_queue():
    from workers.app import create_app

    settings = WorkerSettings(broker_url="redis://127.0.0.1:1/0", queue_llm="gpu")
    app = create_app(settings, reg=Registry())
    conf = app.conf
    assert conf.accept_content == ["msgpack"] and conf.task_serializer == "msgpack"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.task_ignore_result
    assert conf.task_routes["abstractruntime.effect.llm"] == {"queue": "gpu"}
    assert conf.beat_scheduler == "celery.beat:Scheduler"  # no pickled schedule file
    assert conf.broker_transport_options["ack_emulation"] is False
    assert {"abstractruntime.tick", "abstractruntime.wake", "abstractruntime.sweep",
            "abstractruntime.effect.llm"} <= set(app.tasks)


def test_embedded_redis_socket_becomes_a_kombu_socket_url():
    from stores.redis import RedisSettings
    from workers.app import broker_url_of

    s = WorkerSettings(redis=RedisSettings(url="unix://:pw@/tmp/r.sock?db=2"))
    assert broker_url_of(s) == "redis+socket://:pw@/tmp/r.sock?virtual_host=2"
    s = WorkerSettings(redis=RedisSettings(url="redis://h:6379/3"))
    assert broker_url_of(s) == "redis://h:6379/3"
    assert broker_url_of(WorkerSettings(broker_url="amqp://x//")) == "amqp://x//"


def test_a_burst_of_due_countdowns_is_fired_without_a_one_second_pause():
    """Kombu's loop fires ten due timers per turn and then waited a second for the next ten;
    wakes of many runs due at once came seconds late. The loop must come back at once."""
    from kombu.asynchronous.hub import Hub

    from workers.app import serve_due_timers_at_once

    serve_due_timers_at_once()
    hub = Hub()
    fired = []
    for i in range(25):
        hub.timer.call_after(0, fired.append, (i,))
    time.sleep(0.01)
    assert hub.fire_timers() == 0 and len(fired) == 10
    assert hub.fire_timers() == 0 and len(fired) == 20
    hub.fire_timers()
    assert len(fired) == 25
    hub.timer.call_after(5, fired.append, ("later",))
    assert 1 <= hub.fire_timers() <= 5  # a future timer: wait for it (up to the loop maximum), no busy loop
    hub.close()
