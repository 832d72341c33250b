"""The data model: JSON round trips, defaults, and the shapes stored in ledgers."""

from __future__ import annotations

import json

import pytest

from runtime import (
    ActorFingerprint,
    CorruptRecordError,
    Effect,
    EffectOutcome,
    EffectType,
    RunState,
    RunStatus,
    StepPlan,
    StepRecord,
    StepStatus,
    WaitReason,
    WaitState,
    WorkflowSpec,
)
from runtime._hashing import canonical_utf8, sha256_hex


def roundtrip(obj):
    return type(obj).from_dict(json.loads(json.dumps(obj.to_dict())))


def test_enum_values():
    assert [s.value for s in RunStatus] == ["running", "waiting", "completed", "failed", "cancelled"]
    assert [s.value for s in WaitReason] == ["event", "until", "user", "job", "subworkflow"]
    # the 0.2.0 set, in its order, then ours: open_waits (named waits, issue 15)
    assert [s.value for s in EffectType] == ["wait_event", "wait_until", "ask_user", "llm_call", "tool_calls",
                                             "start_subworkflow", "open_waits"]
    assert [s.value for s in StepStatus] == ["started", "completed", "waiting", "failed"]
    assert RunStatus.WAITING == "waiting"


def test_every_value_round_trips_through_json():
    wait = WaitState(reason=WaitReason.USER, wait_key="k", prompt="?", choices=["a"], allow_free_text=False,
                     details={"x": [1]})
    run = RunState.new(workflow_id="w", entry_node="a", actor_id="me", vars={"v": {"n": 1}}, parent_run_id="p")
    run.waiting = wait
    run.status = RunStatus.WAITING
    effect = Effect(type=EffectType.LLM_CALL, payload={"prompt": "hi"}, result_key="r")
    record = StepRecord.start(run=run, node_id="a", effect=effect, attempt=2, idempotency_key="k")
    for obj in (wait, run, effect, StepPlan(node_id="a", effect=effect, next_node="b"),
                StepPlan(node_id="z", complete_output={}), record,
                EffectOutcome.completed({"a": 1}), EffectOutcome.waiting(wait), EffectOutcome.failed("e")):
        assert roundtrip(obj) == obj, type(obj).__name__


def test_frozen_values_and_defaults():
    eff = Effect(type=EffectType.ASK_USER)
    assert eff.payload == {} and eff.result_key is None
    with pytest.raises(AttributeError):
        eff.payload = {}  # type: ignore[misc]
    with pytest.raises(AttributeError):
        StepPlan(node_id="a").next_node = "b"  # type: ignore[misc]
    w = WaitState(reason=WaitReason.EVENT)
    assert w.allow_free_text is True and w.wait_key is None and w.details is None


def test_run_state_new():
    given = {"a": 1}
    run = RunState.new(workflow_id="w", entry_node="start", vars=given)
    assert run.status == RunStatus.RUNNING and run.current_node == "start" and len(run.run_id) == 36
    assert run.vars is given, "new() copies nothing; Runtime.start copies"
    assert run.created_at.endswith("+00:00")
    with pytest.raises(TypeError):
        RunState.new("w", "start")  # type: ignore[misc]


def test_step_record_lifecycle_and_waiting_shape():
    run = RunState.new(workflow_id="w", entry_node="a", actor_id="me", session_id="s")
    rec = StepRecord.start(run=run, node_id="a", effect=Effect(type=EffectType.ASK_USER, payload={"prompt": "?"}))
    assert rec.status == StepStatus.STARTED and rec.attempt == 1 and rec.ended_at is None
    assert (rec.actor_id, rec.session_id) == ("me", "s")
    assert rec.effect == {"type": "ask_user", "payload": {"prompt": "?"}, "result_key": None}
    wait = WaitState(reason=WaitReason.USER, wait_key="k", prompt="?")
    rec.finish_waiting(wait)
    assert rec.status == StepStatus.WAITING and rec.result == {"wait": wait.to_dict()}
    assert rec.result["wait"]["reason"] == "user" and set(rec.result["wait"]) == {
        "reason", "wait_key", "until", "resume_to_node", "result_key", "prompt", "choices", "allow_free_text",
        "details"}
    assert rec.to_dict()["status"] == "waiting"


def test_corrupt_stored_values_raise_typed_errors():
    with pytest.raises(CorruptRecordError, match="unknown RunStatus 'sleeping'"):
        RunState.from_dict({"run_id": "r", "workflow_id": "w", "status": "sleeping", "current_node": "a"})
    with pytest.raises(CorruptRecordError, match="missing field 'current_node'"):
        RunState.from_dict({"run_id": "r", "workflow_id": "w", "status": "running"})
    with pytest.raises(CorruptRecordError, match="needs a reason"):
        WaitState.from_dict({"wait_key": "k"})


def test_workflow_spec():
    wf = WorkflowSpec(workflow_id="w", entry_node="a", nodes={"a": lambda r, c: StepPlan(node_id="a")})
    assert wf.get_node("a") is wf.nodes["a"] and wf.is_terminal("a") is False
    with pytest.raises(KeyError) as err:
        wf.get_node("b")
    assert str(err.value) == "Unknown node_id 'b' in workflow 'w'"


def test_actor_fingerprint_recipe():
    fp = ActorFingerprint.from_metadata(kind="agent", display_name="Zoë", metadata={"model": "m"})
    digest = sha256_hex(canonical_utf8({"kind": "agent", "display_name": "Zoë", "metadata": {"model": "m"}}))
    assert fp.actor_id == "ar_" + digest[:24]
    bare = ActorFingerprint.from_metadata(kind="human")
    assert bare.actor_id == "ar_" + sha256_hex(
        json.dumps({"kind": "human", "display_name": None, "metadata": {}}, sort_keys=True,
                   separators=(",", ":")).encode())[:24]
    assert fp.to_dict() == {"actor_id": fp.actor_id, "kind": "agent", "display_name": "Zoë",
                            "metadata": {"model": "m"}}
    with pytest.raises(AttributeError):
        fp.kind = "x"  # type: ignore[misc]
