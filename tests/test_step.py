"""The kernel step is pure: plain values in, a transition out, no file or network I/O."""

from __future__ import annotations

import dataclasses
import sys
import threading

import pytest

from runtime import Effect, EffectOutcome, EffectType, RunState, RunStatus, StepPlan, WorkflowSpec
from runtime.step import (
    Action,
    PendingEffect,
    apply_cancel,
    apply_outcome,
    apply_resume,
    execute_effect,
    start_attempt,
    step,
    wake_if_due,
)

_IO_EVENTS = ("open", "socket.connect", "socket.bind", "subprocess.Popen", "os.remove", "os.rename")
_watch = threading.local()


def _audit(event: str, args: tuple) -> None:
    if getattr(_watch, "on", False) and event in _IO_EVENTS:
        _watch.seen.append(event)


sys.addaudithook(_audit)


class NoIO:
    """Records any file/socket/process audit event raised in this thread while active."""

    def __enter__(self):
        _watch.on, _watch.seen = True, []
        return self

    def __exit__(self, *exc):
        _watch.on = False
        self.seen = list(_watch.seen)


def agent() -> WorkflowSpec:
    def think(run, ctx):
        return StepPlan(node_id="think", effect=Effect(type=EffectType.LLM_CALL, payload={"prompt": run.vars["q"]},
                                                       result_key="reply"), next_node="answer")

    def answer(run, ctx):
        return StepPlan(node_id="answer", complete_output={"reply": run.vars["reply"]})

    return WorkflowSpec(workflow_id="agent", entry_node="think", nodes={"think": think, "answer": answer})


def test_driving_the_step_with_plain_values_does_no_io():
    run = RunState.new(workflow_id="agent", entry_node="think", run_id="r1", vars={"q": "2+2?"})
    recorded: dict[str, object] = {}
    with NoIO() as io:
        tr = step(run, agent(), find_result=recorded.get)
        assert tr.action == Action.EXECUTE and tr.records == [] and tr.pending.node_id == "think"
        # The pending effect crosses the wire as JSON and comes back whole.
        pending = PendingEffect.from_dict(tr.pending.to_dict())
        started = start_attempt(tr.state, pending)
        outcome = execute_effect(tr.state, pending, {EffectType.LLM_CALL: lambda r, e, n: EffectOutcome.completed("4")})
        landed = apply_outcome(tr.state, pending, outcome, record=started)
        assert landed.action == Action.NEXT and [r.status for r in landed.records] == ["completed"]
        assert landed.state.current_node == "answer" and landed.state.vars["reply"] == "4"
        assert landed.state.vars["_runtime"]["effect_seq"] == 1
        recorded[pending.idempotency_key] = "4"
        done = step(landed.state, agent(), find_result=recorded.get)
        assert done.action == Action.FINISH and done.state.output == {"reply": "4"}
    assert io.seen == [], f"the kernel step did I/O: {io.seen}"


def test_the_audit_hook_does_see_io(tmp_path):
    with NoIO() as io:
        (tmp_path / "x").write_text("y")
    assert "open" in io.seen


def test_step_reuses_a_recorded_result_without_records():
    run = RunState.new(workflow_id="agent", entry_node="think", run_id="r1", vars={"q": "?"})
    tr = step(run, agent(), find_result=lambda key: "cached")
    assert tr.action == Action.NEXT and tr.records == [] and run.vars["reply"] == "cached"


def test_a_failed_attempt_asks_for_a_retry_then_fails_the_run():
    run = RunState.new(workflow_id="agent", entry_node="think", run_id="r1", vars={"q": "?"})
    tr = step(run, agent())
    pending = dataclasses.replace(tr.pending, max_attempts=2)
    first = apply_outcome(run, pending, EffectOutcome.failed("timeout"), record=start_attempt(run, pending))
    assert first.action == Action.RETRY and first.pending.attempt == 2 and first.retry_in_s == 1.0
    assert run.status == RunStatus.RUNNING and "_runtime" not in run.vars
    last = apply_outcome(run, first.pending, EffectOutcome.failed("timeout"), record=None)
    assert last.action == Action.FINISH and run.error == "Effect failed after 2 attempts: timeout"


def test_non_json_effect_result_is_a_failed_attempt():
    run = RunState.new(workflow_id="agent", entry_node="think", run_id="r1", vars={"q": "?"})
    tr = step(run, agent())
    landed = apply_outcome(run, tr.pending, EffectOutcome.completed({"obj": object()}), record=None)
    assert landed.action == Action.FINISH and "effect result['obj'] is not JSON-serializable" in run.error


def test_wake_resume_cancel_helpers():
    run = RunState.new(workflow_id="w", entry_node="a", run_id="r")
    assert not wake_if_due(run, "2030-01-01T00:00:00Z")
    step_waiting = step(run, WorkflowSpec(workflow_id="w", entry_node="a", nodes={
        "a": lambda r, c: StepPlan(node_id="a", effect=Effect(type=EffectType.WAIT_UNTIL,
                                                              payload={"until": "2999-01-01T00:00:00Z"}),
                                   next_node="b")}))
    tr = apply_outcome(run, step_waiting.pending, execute_effect(run, step_waiting.pending, {
        EffectType.WAIT_UNTIL: __import__("runtime.effects", fromlist=["x"]).handle_wait_until}), record=None)
    assert tr.action == Action.PARK
    assert not wake_if_due(run, "2998-12-31T23:59:59+00:00")
    assert wake_if_due(run, "2999-01-01T01:00:00+01:00"), "same instant in another offset is due"
    assert run.status == RunStatus.RUNNING and run.current_node == "b"
    with pytest.raises(ValueError, match="Run is not waiting"):
        apply_resume(run, wait_key=None, payload=1)
    assert apply_cancel(run, "stop") and not apply_cancel(run, "again") and run.error == "stop"


def test_every_timestamp_comes_from_the_clock_it_is_given():
    # Given a fixed clock, I expect every updated_at, started_at and ended_at the step
    # functions write to be its time, so that a test or a replay can pin them.
    def clock():
        return "2030-01-02T03:04:05+00:00"

    run = RunState.new(workflow_id="agent", entry_node="think", run_id="r1", vars={"q": "?"})
    tr = step(run, agent(), clock=clock)
    started = start_attempt(run, tr.pending, clock=clock)
    landed = apply_outcome(run, tr.pending, EffectOutcome.completed("4"), record=started, clock=clock)
    done = step(landed.state, agent(), clock=clock)
    stamps = {run.updated_at, *(r.started_at for r in [started, *done.records]),
              *(r.ended_at for r in [started, *done.records])}
    assert stamps == {clock()} and done.action == Action.FINISH
    other = RunState.new(workflow_id="w", entry_node="a", run_id="r2")
    assert apply_cancel(other, "stop", clock=clock) and other.updated_at == clock()
