"""Scenarios of the in-process Runtime, each run on every store backend."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from runtime import (
    Effect,
    EffectOutcome,
    EffectType,
    InvalidPlanError,
    InvalidRunId,
    PayloadNotSerializable,
    RunAlreadyExists,
    RunNotFound,
    RunNotWaiting,
    RunStatus,
    StepPlan,
    UnknownNodeError,
    WaitKeyMismatch,
    WaitReason,
    WorkflowSpec,
)

from support.scenarios import ask, chain, one_effect


def iso_in(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat()


# -- start ------------------------------------------------------------------------------------


def test_start_copies_vars_and_adds_limits(make_runtime):
    rt = make_runtime()
    given = {"context": {"q": "hi"}}
    run_id = rt.start(workflow=chain(2), vars=given, actor_id="a1", session_id="s1")
    state = rt.get_state(run_id)
    assert state.status == RunStatus.RUNNING and state.current_node == "n0"
    assert state.vars["context"] == {"q": "hi"}
    assert state.vars["_limits"]["max_iterations"] == 25
    assert "_limits" not in given, "the caller's dict must not be changed"
    assert (state.actor_id, state.session_id) == ("a1", "s1")


def test_start_keeps_limits_the_caller_set(make_runtime):
    rt = make_runtime()
    run_id = rt.start(workflow=chain(1), vars={"_limits": {"max_iterations": 3}})
    assert rt.get_state(run_id).vars["_limits"] == {"max_iterations": 3}


def test_start_with_explicit_run_id_refuses_a_taken_id(make_runtime):
    """Decision D7: an explicit run id creates the run only if the id is free."""
    rt = make_runtime()
    wf = chain(2)
    assert rt.start(workflow=wf, run_id="order-42") == "order-42"
    rt.tick(workflow=wf, run_id="order-42")
    with pytest.raises(RunAlreadyExists) as err:
        rt.start(workflow=wf, run_id="order-42", vars={"other": 1})
    assert isinstance(err.value, ValueError) and "order-42" in str(err.value)
    kept = rt.get_state("order-42")
    assert kept.status == RunStatus.COMPLETED and "other" not in kept.vars


@pytest.mark.parametrize("bad", ["../etc/passwd", "a/b", "", "{slot}", ".hidden", "x" * 201])
def test_start_refuses_run_ids_a_store_cannot_hold(make_runtime, bad):
    rt = make_runtime()
    with pytest.raises(InvalidRunId):
        rt.start(workflow=chain(1), run_id=bad)


def test_start_rejects_non_json_vars_naming_the_key(make_runtime, backend):
    rt = make_runtime()
    with pytest.raises(PayloadNotSerializable) as err:
        rt.start(workflow=chain(1), vars={"ok": 1, "deep": {"when": datetime.now()}}, run_id="r-bad")
    assert "vars['deep']['when']" in str(err.value) and isinstance(err.value, TypeError)
    assert backend.run_store.load("r-bad") is None, "nothing may be stored"


def test_start_with_unknown_entry_node_fails_before_storing(make_runtime):
    wf = WorkflowSpec(workflow_id="w", entry_node="missing", nodes={})
    with pytest.raises(UnknownNodeError, match="Unknown node_id 'missing' in workflow 'w'"):
        make_runtime().start(workflow=wf)


def test_get_state_of_unknown_run(make_runtime):
    with pytest.raises(RunNotFound, match="Unknown run_id: nope"):
        make_runtime().get_state("nope")


# -- tick: transitions and completion ---------------------------------------------------------


def test_chain_runs_to_completion_with_one_ledger_record(make_runtime):
    rt = make_runtime()
    wf = chain(5)
    run_id = rt.start(workflow=wf)
    state = rt.tick(workflow=wf, run_id=run_id)
    assert state.status == RunStatus.COMPLETED
    assert state.output == {"visited": 5}
    ledger = rt.get_ledger(run_id)
    # Pure transitions write nothing; completion writes exactly one record, no `started`.
    assert len(ledger) == 1
    rec = ledger[0]
    assert rec["status"] == "completed" and rec["result"] == {"completed": True}
    assert rec["node_id"] == "n4" and rec["effect"] is None and rec["attempt"] == 1
    assert rec["idempotency_key"] is None


def test_empty_dict_output_completes(make_runtime):
    wf = WorkflowSpec(workflow_id="w", entry_node="a",
                      nodes={"a": lambda run, ctx: StepPlan(node_id="a", complete_output={})})
    rt = make_runtime()
    state = rt.tick(workflow=wf, run_id=rt.start(workflow=wf))
    assert state.status == RunStatus.COMPLETED and state.output == {}


def test_max_steps_leaves_a_saved_running_run_at_the_next_node(make_runtime, backend):
    rt = make_runtime()
    wf = chain(10)
    run_id = rt.start(workflow=wf)
    state = rt.tick(workflow=wf, run_id=run_id, max_steps=3)
    assert state.status == RunStatus.RUNNING and state.current_node == "n3"
    reloaded = backend.reopen().run_store.load(run_id)
    assert reloaded.current_node == "n3" and reloaded.vars["visited"] == 3
    assert rt.tick(workflow=wf, run_id=run_id).output == {"visited": 10}


def test_plan_going_nowhere_is_a_typed_error_and_the_run_stays_as_saved(make_runtime):
    def a(run, ctx):
        return StepPlan(node_id="a", next_node="b")

    def b(run, ctx):
        run.vars["touched"] = True
        return StepPlan(node_id="b")

    wf = WorkflowSpec(workflow_id="w", entry_node="a", nodes={"a": a, "b": b})
    rt = make_runtime()
    run_id = rt.start(workflow=wf)
    with pytest.raises(InvalidPlanError, match="Node 'b'") as err:
        rt.tick(workflow=wf, run_id=run_id)
    assert isinstance(err.value, ValueError)
    state = rt.get_state(run_id)
    assert state.status == RunStatus.RUNNING and state.current_node == "b" and "touched" not in state.vars


def test_unknown_node_raises_and_leaves_run_running(make_runtime):
    wf = WorkflowSpec(workflow_id="w", entry_node="a",
                      nodes={"a": lambda run, ctx: StepPlan(node_id="a", next_node="ghost")})
    rt = make_runtime()
    run_id = rt.start(workflow=wf)
    with pytest.raises(KeyError, match="Unknown node_id 'ghost' in workflow 'w'"):
        rt.tick(workflow=wf, run_id=run_id)
    assert rt.get_state(run_id).status == RunStatus.RUNNING


def test_node_handler_exception_reaches_the_caller(make_runtime):
    """Decision D5 (in-process half): node errors are raised, the run is left as last saved."""

    def boom(run, ctx):
        run.vars["half_done"] = True
        raise RuntimeError("node exploded")

    wf = WorkflowSpec(workflow_id="w", entry_node="a",
                      nodes={"a": lambda run, ctx: StepPlan(node_id="a", next_node="b"), "b": boom})
    rt = make_runtime()
    run_id = rt.start(workflow=wf)
    with pytest.raises(RuntimeError, match="node exploded"):
        rt.tick(workflow=wf, run_id=run_id)
    state = rt.get_state(run_id)
    assert state.status == RunStatus.RUNNING and state.current_node == "b"
    assert "half_done" not in state.vars
    assert rt.get_ledger(run_id) == []


def test_non_json_effect_payload_is_rejected_naming_the_key(make_runtime):
    wf = one_effect(Effect(type=EffectType.TOOL_CALLS, payload={"tool_calls": [{"arg": {1, 2}}]}))
    rt = make_runtime(effect_handlers={EffectType.TOOL_CALLS: lambda run, eff: EffectOutcome.completed(1)})
    run_id = rt.start(workflow=wf)
    with pytest.raises(PayloadNotSerializable, match=r"\['tool_calls'\]\[0\]\['arg'\]"):
        rt.tick(workflow=wf, run_id=run_id)
    assert rt.get_ledger(run_id) == []
    assert rt.get_state(run_id).current_node == "act"


def test_non_json_vars_set_by_a_node_do_not_reach_the_store(make_runtime):
    def a(run, ctx):
        run.vars["conn"] = object()
        return StepPlan(node_id="a", next_node="a")

    wf = WorkflowSpec(workflow_id="w", entry_node="a", nodes={"a": a})
    rt = make_runtime()
    run_id = rt.start(workflow=wf)
    with pytest.raises(PayloadNotSerializable, match=r"\['vars'\]\['conn'\]"):
        rt.tick(workflow=wf, run_id=run_id)
    assert "conn" not in rt.get_state(run_id).vars


# -- effects ----------------------------------------------------------------------------------


def test_effect_writes_started_then_outcome_with_one_step_id(make_runtime):
    calls: list[dict[str, Any]] = []

    def tool(run, effect, default_next_node):
        calls.append(effect.payload)
        return EffectOutcome.completed({"sum": 3})

    wf = one_effect(Effect(type=EffectType.TOOL_CALLS, payload={"a": 1, "b": 2}, result_key="calc.out"))
    rt = make_runtime(effect_handlers={EffectType.TOOL_CALLS: tool})
    run_id = rt.start(workflow=wf)
    state = rt.tick(workflow=wf, run_id=run_id)
    assert state.status == RunStatus.COMPLETED
    assert state.output == {"calc": {"out": {"sum": 3}}}, "dot notation makes nested dicts"
    assert calls == [{"a": 1, "b": 2}]
    started, done, completion = rt.get_ledger(run_id)
    assert (started["status"], done["status"], completion["status"]) == ("started", "completed", "completed")
    assert started["step_id"] == done["step_id"] and started["started_at"] == done["started_at"]
    assert started["ended_at"] is None and done["ended_at"] is not None
    assert done["result"] == {"sum": 3} and started["result"] is None
    assert started["effect"] == {"type": "tool_calls", "payload": {"a": 1, "b": 2}, "result_key": "calc.out"}
    assert started["idempotency_key"] == done["idempotency_key"] and len(done["idempotency_key"]) == 32
    assert done["attempt"] == 1


def test_result_key_replaces_non_dict_values_on_the_path(make_runtime):
    def seed(run, ctx):
        run.vars["a"] = "text"
        return StepPlan(node_id="seed", next_node="act")

    wf = one_effect(Effect(type=EffectType.TOOL_CALLS, payload={}, result_key="a.b"))
    wf = WorkflowSpec(workflow_id="w", entry_node="seed", nodes={**wf.nodes, "seed": seed})
    rt = make_runtime(effect_handlers={EffectType.TOOL_CALLS: lambda r, e: EffectOutcome.completed(5)})
    assert rt.tick(workflow=wf, run_id=rt.start(workflow=wf)).output == {"a": {"b": 5}}


def test_both_handler_signatures_are_accepted(make_runtime):
    seen = []

    def two(run, effect):
        seen.append(("two", effect.type))
        return EffectOutcome.completed("t")

    def three(run, effect, default_next_node):
        seen.append(("three", default_next_node))
        return EffectOutcome.completed("l")

    rt = make_runtime(effect_handlers={EffectType.TOOL_CALLS: two, EffectType.LLM_CALL: three})
    for etype in (EffectType.TOOL_CALLS, EffectType.LLM_CALL):
        wf = one_effect(Effect(type=etype, payload={}, result_key="r"), workflow_id=etype.value)
        assert rt.tick(workflow=wf, run_id=rt.start(workflow=wf)).status == RunStatus.COMPLETED
    assert seen == [("two", EffectType.TOOL_CALLS), ("three", "done")]


def test_handlers_taken_from_one_runtime_work_in_another(make_runtime):
    """``effect_handlers`` hands out adapted handlers; giving them to a second runtime must not
    wrap a two-argument handler twice (the Celery registry does exactly this)."""

    def two(run, effect):
        return EffectOutcome.completed("t")

    first = make_runtime(effect_handlers={EffectType.TOOL_CALLS: two})
    second = make_runtime(effect_handlers={EffectType.TOOL_CALLS: first.effect_handlers[EffectType.TOOL_CALLS]})
    wf = one_effect(Effect(type=EffectType.TOOL_CALLS, payload={}, result_key="r"))
    state = second.tick(workflow=wf, run_id=second.start(workflow=wf))
    assert state.status == RunStatus.COMPLETED and state.output["r"] == "t"


def test_user_handler_overrides_a_builtin(make_runtime):
    rt = make_runtime(effect_handlers={EffectType.ASK_USER: lambda r, e: EffectOutcome.completed("auto-yes")})
    wf = ask()
    state = rt.tick(workflow=wf, run_id=rt.start(workflow=wf))
    assert state.status == RunStatus.COMPLETED and state.output == {"answer": "auto-yes"}


def test_missing_handler_fails_the_run(make_runtime):
    wf = one_effect(Effect(type=EffectType.LLM_CALL, payload={"prompt": "hi"}))
    rt = make_runtime()
    state = rt.tick(workflow=wf, run_id=rt.start(workflow=wf))
    assert state.status == RunStatus.FAILED
    assert state.error == "Effect failed after 1 attempts: No effect handler registered for llm_call"


def test_effect_that_completes_in_a_plan_without_next_node(make_runtime):
    wf = one_effect(Effect(type=EffectType.TOOL_CALLS, payload={}), next_node=None)
    rt = make_runtime(effect_handlers={EffectType.TOOL_CALLS: lambda r, e: EffectOutcome.completed("x")})
    run_id = rt.start(workflow=wf)
    with pytest.raises(InvalidPlanError, match="no next_node"):
        rt.tick(workflow=wf, run_id=run_id)
    assert [r["status"] for r in rt.get_ledger(run_id)] == ["started", "completed"]
    assert rt.get_state(run_id).current_node == "act"


# -- waits and resume -------------------------------------------------------------------------


def test_ask_user_parks_then_resume_delivers_the_answer(make_runtime, backend):
    rt = make_runtime()
    wf = ask("Deploy?", choices=["yes", "no"], allow_free_text=0)
    run_id = rt.start(workflow=wf)
    state = rt.tick(workflow=wf, run_id=run_id)
    assert state.status == RunStatus.WAITING
    w = state.waiting
    assert w.reason == WaitReason.USER and w.wait_key == f"user:{run_id}:act"
    assert (w.prompt, w.choices, w.allow_free_text) == ("Deploy?", ["yes", "no"], False)
    assert w.resume_to_node == "done" and w.result_key == "answer"
    waiting_rec = rt.get_ledger(run_id)[-1]
    assert waiting_rec["status"] == "waiting"
    assert waiting_rec["result"] == {"wait": w.to_dict()} and waiting_rec["result"]["wait"]["reason"] == "user"

    # Another process answers.
    rt2 = type(rt)(run_store=backend.reopen().run_store, ledger_store=backend.reopen().ledger_store)
    state = rt2.resume(workflow=wf, run_id=run_id, wait_key=w.wait_key, payload={"text": "yes"})
    assert state.status == RunStatus.COMPLETED and state.output == {"answer": {"text": "yes"}}


def test_ask_user_wait_key_and_resume_node_from_payload(make_runtime):
    wf = ask("Q", wait_key="custom-key", resume_to_node="act")
    rt = make_runtime()
    state = rt.tick(workflow=wf, run_id=rt.start(workflow=wf))
    assert state.waiting.wait_key == "custom-key" and state.waiting.resume_to_node == "act"


def test_ask_user_without_prompt_fails(make_runtime):
    wf = one_effect(Effect(type=EffectType.ASK_USER, payload={}))
    rt = make_runtime()
    state = rt.tick(workflow=wf, run_id=rt.start(workflow=wf))
    assert state.status == RunStatus.FAILED and state.error.endswith("ask_user requires payload.prompt")


def test_resume_refuses_wrong_key_and_non_waiting_runs(make_runtime):
    rt = make_runtime()
    wf = ask()
    run_id = rt.start(workflow=wf)
    with pytest.raises(RunNotWaiting, match="Run is not waiting"):
        rt.resume(workflow=wf, run_id=run_id, wait_key=None, payload={})
    state = rt.tick(workflow=wf, run_id=run_id)
    with pytest.raises(WaitKeyMismatch, match=f"wait_key mismatch: expected 'user:{run_id}:act', got 'other'"):
        rt.resume(workflow=wf, run_id=run_id, wait_key="other", payload={"x": 1})
    after = rt.get_state(run_id)
    assert after.status == RunStatus.WAITING and "answer" not in after.vars
    assert state.waiting.to_dict() == after.waiting.to_dict()


def test_resume_with_non_json_payload_stores_nothing(make_runtime):
    rt = make_runtime()
    wf = ask()
    run_id = rt.start(workflow=wf)
    key = rt.tick(workflow=wf, run_id=run_id).waiting.wait_key
    with pytest.raises(PayloadNotSerializable, match=r"payload\['f'\]"):
        rt.resume(workflow=wf, run_id=run_id, wait_key=key, payload={"f": lambda: 1})
    assert rt.get_state(run_id).status == RunStatus.WAITING


def test_resume_with_no_key_skips_the_check(make_runtime):
    rt = make_runtime()
    wf = ask()
    run_id = rt.start(workflow=wf)
    rt.tick(workflow=wf, run_id=run_id)
    assert rt.resume(workflow=wf, run_id=run_id, wait_key=None, payload="ok").output == {"answer": "ok"}


def test_wait_event_needs_a_key_and_resumes_on_it(make_runtime):
    rt = make_runtime()
    bad = one_effect(Effect(type=EffectType.WAIT_EVENT, payload={}), workflow_id="bad")
    state = rt.tick(workflow=bad, run_id=rt.start(workflow=bad))
    assert state.error == "Effect failed after 1 attempts: wait_event requires payload.wait_key"

    wf = one_effect(Effect(type=EffectType.WAIT_EVENT, payload={"wait_key": 42}, result_key="evt"))
    run_id = rt.start(workflow=wf)
    state = rt.tick(workflow=wf, run_id=run_id)
    assert state.waiting.reason == WaitReason.EVENT and state.waiting.wait_key == "42"
    # A tick of a waiting run changes nothing.
    assert rt.tick(workflow=wf, run_id=run_id).status == RunStatus.WAITING
    assert rt.resume(workflow=wf, run_id=run_id, wait_key="42", payload={"n": 1}).output == {"evt": {"n": 1}}


def test_wait_until_in_the_past_completes_at_once(make_runtime):
    until = "2020-01-01T00:00:00Z"
    wf = one_effect(Effect(type=EffectType.WAIT_UNTIL, payload={"until": until}, result_key="t"))
    rt = make_runtime()
    state = rt.tick(workflow=wf, run_id=rt.start(workflow=wf))
    assert state.status == RunStatus.COMPLETED and state.output == {"t": {"until": until, "ready": True}}


@pytest.mark.parametrize("fmt", ["offset", "zulu", "naive"])
def test_wait_until_parses_times_and_wakes_only_when_due(make_runtime, fmt):
    """Decision D4: `until` is parsed (Z, offsets, naive = UTC), never compared as text."""
    due = datetime.now(timezone.utc) + timedelta(hours=1)
    text = {
        "offset": due.astimezone(timezone(timedelta(hours=-5))).isoformat(),  # sorts *before* now as text
        "zulu": due.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "naive": due.replace(tzinfo=None).isoformat(),
    }[fmt]
    wf = one_effect(Effect(type=EffectType.WAIT_UNTIL, payload={"until": text}, result_key="t"))
    rt = make_runtime()
    run_id = rt.start(workflow=wf)
    state = rt.tick(workflow=wf, run_id=run_id)
    assert state.status == RunStatus.WAITING and state.waiting.reason == WaitReason.UNTIL
    assert state.waiting.until == text
    assert rt.tick(workflow=wf, run_id=run_id).status == RunStatus.WAITING


def test_wait_until_resumes_at_resume_node_storing_nothing(make_runtime, backend):
    wf = one_effect(Effect(type=EffectType.WAIT_UNTIL, payload={"until": iso_in(3600)}, result_key="t"))
    rt = make_runtime()
    run_id = rt.start(workflow=wf)
    rt.tick(workflow=wf, run_id=run_id)
    records_before = len(rt.get_ledger(run_id))
    # Time passes: move the wait into the past, as a clock would.
    run = backend.run_store.load(run_id)
    run.waiting.until = "2001-01-01T00:00:00+00:00"
    backend.run_store.save(run)
    state = rt.tick(workflow=wf, run_id=run_id)
    assert state.status == RunStatus.COMPLETED and state.output == {}
    assert len(rt.get_ledger(run_id)) == records_before + 1  # only the completion record


def test_wait_until_with_a_bad_time_fails_clearly(make_runtime):
    wf = one_effect(Effect(type=EffectType.WAIT_UNTIL, payload={"until": "tomorrow"}))
    rt = make_runtime()
    state = rt.tick(workflow=wf, run_id=rt.start(workflow=wf))
    assert state.status == RunStatus.FAILED and "ISO-8601" in state.error and "'tomorrow'" in state.error


# -- cancellation -----------------------------------------------------------------------------


def test_cancel_running_and_waiting_runs(make_runtime):
    rt = make_runtime()
    wf = ask()
    waiting = rt.start(workflow=wf)
    rt.tick(workflow=wf, run_id=waiting)
    running = rt.start(workflow=chain(3))
    a = rt.cancel_run(waiting, reason="user left")
    b = rt.cancel_run(running)
    assert (a.status, a.error, a.waiting) == (RunStatus.CANCELLED, "user left", None)
    assert (b.status, b.error) == (RunStatus.CANCELLED, "Cancelled")
    assert rt.get_state(waiting).status == RunStatus.CANCELLED


def test_cancel_leaves_terminal_runs_unchanged(make_runtime):
    rt = make_runtime()
    wf = chain(1)
    run_id = rt.start(workflow=wf)
    done = rt.tick(workflow=wf, run_id=run_id)
    again = rt.cancel_run(run_id, reason="too late")
    assert again.status == RunStatus.COMPLETED and again.error is None and again.updated_at == done.updated_at
    with pytest.raises(KeyError):
        rt.cancel_run("missing")


def test_cancelled_run_is_terminal_for_tick(make_runtime):
    """Decision D1: 0.2.0 stepped a cancelled run on to completion; we return it unchanged."""
    rt = make_runtime()
    wf = chain(3)
    run_id = rt.start(workflow=wf)
    rt.cancel_run(run_id)
    state = rt.tick(workflow=wf, run_id=run_id)
    assert state.status == RunStatus.CANCELLED and state.error == "Cancelled" and state.current_node == "n0"
    assert rt.get_ledger(run_id) == []


def test_completed_and_failed_runs_are_returned_as_is(make_runtime):
    rt = make_runtime()
    wf = chain(2)
    run_id = rt.start(workflow=wf)
    first = rt.tick(workflow=wf, run_id=run_id)
    second = rt.tick(workflow=wf, run_id=run_id)
    assert second.to_dict() == first.to_dict()
    assert len(rt.get_ledger(run_id)) == 1
