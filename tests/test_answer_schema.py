"""Typed answers (issue 15, first part): a question may carry a schema from a documented subset of
JSON Schema; a schema outside it is refused when the wait opens, naming the keyword, and an
answer that does not match is refused before anything is written, in process and on Redis.
"""

from __future__ import annotations

from typing import Any

import pytest

from runtime import Effect, EffectType, RunStatus
from runtime.answers import InvalidAnswer, InvalidAnswerSchema, check_answer, check_schema
from runtime.errors import RunError, WorkflowError

from support.flow_stub import engine_of
from support.scenarios import one_effect

APPROVAL = {"type": "object", "required": ["approved", "amount"], "additionalProperties": False,
            "properties": {"approved": {"type": "boolean"},
                           "amount": {"type": "integer", "minimum": 1, "maximum": 1000},
                           "comment": {"type": "string", "maxLength": 20, "default": ""},
                           "tags": {"type": "array", "items": {"enum": ["urgent", "legal"]}, "maxItems": 2}}}


# -- the subset ----------------------------------------------------------------------------------


@pytest.mark.parametrize("answer", [
    {"approved": True, "amount": 1},
    {"approved": False, "amount": 1000, "comment": "ok", "tags": ["legal"]},
    {"approved": True, "amount": 7.0},  # a float with no fraction is an integer, as in JSON Schema
])
def test_answers_that_match(answer):
    check_answer(APPROVAL, answer)


@pytest.mark.parametrize("answer, path, problem", [
    ("yes", "answer", "must be object, got string 'yes'"),
    ({"amount": 5}, "answer.approved", "is required"),
    ({"approved": "yes", "amount": 5}, "answer.approved", "must be boolean, got string 'yes'"),
    ({"approved": True, "amount": 0}, "answer.amount", "must be at least 1, got 0"),
    ({"approved": True, "amount": 1001}, "answer.amount", "must be at most 1000, got 1001"),
    ({"approved": True, "amount": 2.5}, "answer.amount", "must be integer, got number 2.5"),
    ({"approved": True, "amount": True}, "answer.amount", "must be integer, got boolean True"),
    ({"approved": True, "amount": 5, "comment": "x" * 21}, "answer.comment", "must be at most 20 characters, got 21"),
    ({"approved": True, "amount": 5, "tags": ["vip"]}, "answer.tags[0]", "must be one of ['urgent', 'legal']"),
    ({"approved": True, "amount": 5, "tags": ["legal"] * 3}, "answer.tags", "must hold at most 2 items, got 3"),
    ({"approved": True, "amount": 5, "by": "me"}, "answer", "has fields the question does not ask for: by"),
])
def test_answers_that_do_not_match_name_the_place_and_the_problem(answer, path, problem):
    with pytest.raises(InvalidAnswer) as caught:
        check_answer(APPROVAL, answer)
    assert caught.value.path == path and caught.value.problem.startswith(problem), caught.value
    assert isinstance(caught.value, (RunError, ValueError))


def test_enum_does_not_take_true_for_one():
    with pytest.raises(InvalidAnswer):
        check_answer({"enum": [1, 2]}, True)
    check_answer({"enum": [1, 2]}, 1.0)


@pytest.mark.parametrize("schema, where", [
    ({"type": "string", "pattern": "^a"}, "pattern"),
    ({"properties": {"a": {"format": "email"}}}, "properties.a.format"),
    ({"type": "date"}, "type"),
    ({"type": []}, "type"),
    ({"enum": []}, "enum"),
    ({"minLength": -1}, "minLength"),
    ({"maxItems": 1.5}, "maxItems"),
    ({"minimum": "1"}, "minimum"),
    ({"required": "a"}, "required"),
    ({"additionalProperties": {"type": "string"}}, "additionalProperties"),
    ({"items": {"$ref": "#/x"}}, "items.$ref"),
    ({"type": "integer", "default": "none"}, "default"),
    ("string", "(schema)"),
])
def test_a_schema_outside_the_subset_is_refused_naming_the_keyword(schema, where):
    with pytest.raises(InvalidAnswerSchema) as caught:
        check_schema(schema)
    assert str(caught.value).startswith(f"answer schema: {where}:"), caught.value
    assert isinstance(caught.value, (WorkflowError, ValueError))


def test_a_schema_nested_too_deep_is_refused():
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(40):
        schema = {"type": "array", "items": schema}
    with pytest.raises(InvalidAnswerSchema, match="deeper than 32"):
        check_schema(schema)
    check_schema(APPROVAL)


# -- a question with a schema, in process --------------------------------------------------------


def asks(schema: Any) -> Any:
    return one_effect(Effect(type=EffectType.ASK_USER, payload={"prompt": "Approve?", "schema": schema},
                             result_key="answer"), workflow_id="typed_ask")


def test_in_process_a_bad_answer_changes_nothing_and_a_good_one_resumes(make_runtime):
    rt = make_runtime()
    wf = asks(APPROVAL)
    run_id = rt.start(workflow=wf)
    state = rt.tick(workflow=wf, run_id=run_id)
    assert state.status == RunStatus.WAITING and state.waiting.details == {"schema": APPROVAL}
    before, ledger = rt.get_state(run_id).to_dict(), rt.get_ledger(run_id)
    with pytest.raises(InvalidAnswer, match=r"answer\.amount: must be at most 1000"):
        rt.resume(workflow=wf, run_id=run_id, wait_key=state.waiting.wait_key, payload={"approved": True,
                                                                                        "amount": 5000})
    assert rt.get_state(run_id).to_dict() == before and rt.get_ledger(run_id) == ledger
    done = rt.resume(workflow=wf, run_id=run_id, wait_key=state.waiting.wait_key,
                     payload={"approved": True, "amount": 500})
    assert done.status == RunStatus.COMPLETED and done.output == {"answer": {"approved": True, "amount": 500}}


def test_in_process_a_bad_schema_fails_the_question_as_it_opens(make_runtime):
    rt = make_runtime()
    wf = asks({"type": "string", "format": "email"})
    run_id = rt.start(workflow=wf)
    state = rt.tick(workflow=wf, run_id=run_id)
    assert state.status == RunStatus.FAILED
    assert "ask_user: answer schema: format: is not supported" in state.error


def test_a_question_without_a_schema_takes_any_answer_as_before(make_runtime):
    rt = make_runtime()
    wf = one_effect(Effect(type=EffectType.ASK_USER, payload={"prompt": "Anything?", "choices": ["a", "b"]},
                           result_key="answer"), workflow_id="untyped_ask")
    run_id = rt.start(workflow=wf)
    state = rt.tick(workflow=wf, run_id=run_id)
    assert state.waiting.details is None
    done = rt.resume(workflow=wf, run_id=run_id, wait_key=state.waiting.wait_key, payload="c")  # choices: a hint
    assert done.status == RunStatus.COMPLETED


# -- on Redis, through the engine a client uses --------------------------------------------------


def waiting_on_approval(store: Any) -> tuple[Any, Any, str]:
    """An engine on ``store`` and a run of ``typed_ask`` waiting for its APPROVAL answer."""
    from workers.registry import Registry

    reg = Registry()
    reg.register_workflow(asks(APPROVAL))
    engine, stub = engine_of(store, reg)
    run_id = engine.create(reg.workflows.get_or_raise("typed_ask"))
    stub.run_until_quiet(engine)
    assert store.runs.load(run_id).status == RunStatus.WAITING
    return engine, stub, run_id


def test_on_redis_a_refused_answer_writes_nothing(store):
    engine, stub, run_id = waiting_on_approval(store)
    version = store.client.hget(store.keys.run(run_id), "v")
    records = store.ledger.list(run_id)
    with pytest.raises(InvalidAnswer, match=r"answer\.approved: must be boolean"):
        engine.resume(run_id, wait_key=None, payload={"approved": "yes", "amount": 3}, action="respond")
    assert store.client.hget(store.keys.run(run_id), "v") == version and store.ledger.list(run_id) == records
    assert stub.pending == []  # nothing sent either
    engine.resume(run_id, wait_key=None, payload={"approved": True, "amount": 3}, action="respond")
    stub.run_until_quiet(engine)
    state = store.runs.load(run_id)
    assert state.status == RunStatus.COMPLETED and state.output["answer"] == {"approved": True, "amount": 3}


def test_the_cli_refuses_a_bad_answer_with_exit_2_naming_the_field(redis_server):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from stores.redis import RedisBackend

    from support.backends import fresh_prefix
    from support.cli import refused

    prefix = fresh_prefix("ans")
    store = RedisBackend(redis_server.client(), prefix=prefix)
    _engine, _stub, run_id = waiting_on_approval(store)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_")}
    env.update(ABSTRACTRUNTIME_REDIS_URL=redis_server.url, ABSTRACTRUNTIME_REDIS_PREFIX=prefix)
    cli = str(Path(sys.executable).with_name("abstractruntime"))
    proc = subprocess.run([cli, "respond", run_id, '{"approved": "yes", "amount": 3}'], env=env,
                          capture_output=True, text=True, timeout=60)
    refused(proc, 2, "answer.approved", "must be boolean")
    assert store.runs.load(run_id).status == RunStatus.WAITING
