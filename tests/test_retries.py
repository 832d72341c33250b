"""Retries with backoff, idempotency keys, and reuse of recorded results after a crash."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from runtime import (
    DefaultEffectPolicy,
    Effect,
    EffectOutcome,
    EffectType,
    NoRetryPolicy,
    RetryPolicy,
    RunState,
    RunStatus,
    Runtime,
    compute_idempotency_key,
)
from runtime.step import Action, apply_outcome, execute_effect, start_attempt, step

from support.scenarios import one_effect, tool_loop


class Flaky:
    """A tool that fails ``failures`` times, then succeeds; counts its calls."""

    def __init__(self, failures: int, *, raises: bool = False) -> None:
        self.failures = failures
        self.raises = raises
        self.calls = 0

    def __call__(self, run: Any, effect: Effect, default_next_node: Any) -> EffectOutcome:
        self.calls += 1
        if self.calls <= self.failures:
            if self.raises:
                raise ConnectionError(f"down #{self.calls}")
            return EffectOutcome.failed(f"down #{self.calls}")
        return EffectOutcome.completed({"ok": self.calls})


def test_retries_with_exponential_backoff_and_a_record_per_attempt(make_runtime, no_sleep):
    tool = Flaky(2)
    rt = make_runtime(effect_handlers={EffectType.TOOL_CALLS: tool},
                      effect_policy=RetryPolicy(tool_max_attempts=3, backoff_base=0.5, backoff_max=30))
    wf = one_effect(Effect(type=EffectType.TOOL_CALLS, payload={"q": 1}, result_key="r"))
    run_id = rt.start(workflow=wf)
    state = rt.tick(workflow=wf, run_id=run_id)
    assert state.status == RunStatus.COMPLETED and state.output == {"r": {"ok": 3}}
    assert tool.calls == 3
    assert no_sleep == [0.5, 1.0], "base * 2^(attempt-1) between attempts, none after the last"
    effect_records = rt.get_ledger(run_id)[:-1]
    assert [(r["status"], r["attempt"]) for r in effect_records] == [
        ("started", 1), ("failed", 1), ("started", 2), ("failed", 2), ("started", 3), ("completed", 3)]
    assert effect_records[1]["error"] == "down #1"
    assert len({r["idempotency_key"] for r in effect_records}) == 1, "every attempt shares the key"
    assert len({r["step_id"] for r in effect_records}) == 3, "each attempt is its own step"


def test_all_attempts_failing_fails_the_run_naming_the_count(make_runtime, no_sleep):
    tool = Flaky(10, raises=True)
    rt = make_runtime(effect_handlers={EffectType.LLM_CALL: tool}, effect_policy=RetryPolicy(backoff_max=1.5))
    wf = one_effect(Effect(type=EffectType.LLM_CALL, payload={"prompt": "x"}))
    state = rt.tick(workflow=wf, run_id=rt.start(workflow=wf))
    assert state.status == RunStatus.FAILED
    assert state.error == "Effect failed after 3 attempts: Effect handler raised exception: down #3"
    assert tool.calls == 3 and no_sleep == [1.0, 1.5], "backoff is capped at backoff_max"


def test_a_raising_three_argument_handler_is_called_once_per_attempt(make_runtime, no_sleep):
    tool = Flaky(1, raises=True)
    rt = make_runtime(effect_handlers={EffectType.TOOL_CALLS: tool})
    wf = one_effect(Effect(type=EffectType.TOOL_CALLS, payload={}))
    state = rt.tick(workflow=wf, run_id=rt.start(workflow=wf))
    assert tool.calls == 1 and state.status == RunStatus.FAILED and no_sleep == []


def test_waiting_outcomes_are_never_retried(make_runtime, no_sleep):
    rt = make_runtime(effect_policy=DefaultEffectPolicy(default_max_attempts=5))
    wf = one_effect(Effect(type=EffectType.ASK_USER, payload={"prompt": "?"}))
    run_id = rt.start(workflow=wf)
    assert rt.tick(workflow=wf, run_id=run_id).status == RunStatus.WAITING
    assert [r["status"] for r in rt.get_ledger(run_id)] == ["started", "waiting"]


def test_policy_defaults():
    eff = Effect(type=EffectType.LLM_CALL, payload={})
    d = DefaultEffectPolicy()
    assert (d.max_attempts(eff), d.backoff_seconds(effect=eff, attempt=1)) == (1, 1.0)
    assert d.backoff_seconds(effect=eff, attempt=10) == 60.0
    r = RetryPolicy()
    assert r.max_attempts(eff) == 3 and r.max_attempts(Effect(type=EffectType.TOOL_CALLS)) == 2
    assert r.max_attempts(Effect(type=EffectType.ASK_USER)) == 1
    assert r.backoff_seconds(effect=eff, attempt=6) == 30.0
    assert NoRetryPolicy().max_attempts(eff) == 1
    per_type = DefaultEffectPolicy(effect_max_attempts={"tool_calls": 4})
    assert per_type.max_attempts(Effect(type=EffectType.TOOL_CALLS)) == 4
    with pytest.raises(TypeError):
        RetryPolicy(3)  # type: ignore[misc]  # keyword-only, as in the reference


def test_idempotency_key_recipe():
    """SHA-256 over ASCII canonical JSON of {run_id, node_id, effect_type, effect_payload, effect_seq} (D2)."""
    eff = Effect(type=EffectType.TOOL_CALLS, payload={"b": "é", "a": [1, 2]})
    obj = {"run_id": "r1", "node_id": "n", "effect_type": "tool_calls", "effect_payload": eff.payload,
           "effect_seq": 4}
    expected = hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]
    assert compute_idempotency_key(run_id="r1", node_id="n", effect=eff, effect_seq=4) == expected
    assert compute_idempotency_key(run_id="r1", node_id="n", effect=eff) != expected
    run = RunState.new(workflow_id="w", entry_node="n", run_id="r1", vars={"_runtime": {"effect_seq": 4}})
    assert DefaultEffectPolicy().idempotency_key(run=run, node_id="n", effect=eff) == expected


def test_a_loop_repeating_an_effect_really_runs_it_each_time(make_runtime):
    """Decision D2: 0.2.0 handed a loop the first, stale result; effect_seq gives each turn its own key."""
    reads = []

    def read_file(run, effect, default_next_node):
        reads.append(1)
        return EffectOutcome.completed({"version": len(reads)})

    rt = make_runtime(effect_handlers={EffectType.TOOL_CALLS: read_file})
    wf = tool_loop(3, {"tool_calls": [{"name": "read", "arguments": {"path": "a.txt"}}]})
    run_id = rt.start(workflow=wf)
    state = rt.tick(workflow=wf, run_id=run_id)
    assert state.output == {"seen": [{"version": 1}, {"version": 2}, {"version": 3}]}
    assert len(reads) == 3
    keys = [r["idempotency_key"] for r in rt.get_ledger(run_id) if r["status"] == "completed" and r["effect"]]
    assert len(set(keys)) == 3
    assert state.vars["_runtime"]["effect_seq"] == 3


def crash_after_effect(rt: Runtime, workflow, run_id: str) -> None:
    """Do what a driver does up to the commit, then die: the effect ran and its records are in
    the ledger, but the run state is never saved."""
    run = rt.get_state(run_id)
    tr = step(run, workflow, policy=rt.effect_policy,
              find_result=lambda key: rt.ledger_store.find_effect_result(run_id, key))
    assert tr.action == Action.EXECUTE
    record = start_attempt(run, tr.pending)
    rt.ledger_store.append(record)
    outcome = execute_effect(run, tr.pending, rt.effect_handlers)
    done = apply_outcome(run, tr.pending, outcome, record=record)
    for rec in done.records:
        rt.ledger_store.append(rec)
    # -- crash: rt.run_store.save(done.state) never happens --


def test_crash_between_effect_and_commit_reuses_the_recorded_result(backend):
    """A payment is charged once, even when the process dies before saving the run."""
    charges = []

    def charge(run, effect, default_next_node):
        charges.append(effect.payload["amount"])
        return EffectOutcome.completed({"receipt": f"rcpt-{len(charges)}"})

    handlers = {EffectType.TOOL_CALLS: charge}
    wf = one_effect(Effect(type=EffectType.TOOL_CALLS, payload={"amount": 30}, result_key="receipt"))
    rt = Runtime(run_store=backend.run_store, ledger_store=backend.ledger_store, effect_handlers=handlers)
    run_id = rt.start(workflow=wf)
    crash_after_effect(rt, wf, run_id)
    assert rt.get_state(run_id).current_node == "act", "the run was not committed"
    records_before = len(rt.get_ledger(run_id))

    again = backend.reopen()  # a new process over the same data
    rt2 = Runtime(run_store=again.run_store, ledger_store=again.ledger_store, effect_handlers=handlers)
    state = rt2.tick(workflow=wf, run_id=run_id)
    assert charges == [30], "the effect must not run twice"
    assert state.status == RunStatus.COMPLETED and state.output == {"receipt": {"receipt": "rcpt-1"}}
    assert len(rt2.get_ledger(run_id)) == records_before + 1, "reuse writes no record; completion writes one"
    assert state.vars["_runtime"]["effect_seq"] == 1


def test_a_recorded_none_result_is_not_reused(make_runtime):
    calls = []

    def nothing(run, effect, default_next_node):
        calls.append(1)
        return EffectOutcome.completed(None)

    rt = make_runtime(effect_handlers={EffectType.TOOL_CALLS: nothing})
    wf = one_effect(Effect(type=EffectType.TOOL_CALLS, payload={}))
    run_id = rt.start(workflow=wf)
    crash_after_effect(rt, wf, run_id)
    rt.tick(workflow=wf, run_id=run_id)
    assert len(calls) == 2


def test_lookup_without_an_index_falls_back_to_the_ledger(backend):
    """A reference-style ledger (append/list only) still gets crash reuse, by scanning."""

    class PlainLedger:
        def __init__(self, inner):
            self.inner = inner

        def append(self, record):
            self.inner.append(record)

        def list(self, run_id):
            return self.inner.list(run_id)

    calls = []

    def tool(run, effect):
        calls.append(1)
        return EffectOutcome.completed("once")

    ledger = PlainLedger(backend.ledger_store)
    wf = one_effect(Effect(type=EffectType.TOOL_CALLS, payload={}), workflow_id="w")
    rt = Runtime(run_store=backend.run_store, ledger_store=ledger, effect_handlers={EffectType.TOOL_CALLS: tool})
    run_id = rt.start(workflow=wf)
    run = rt.get_state(run_id)
    tr = step(run, wf)
    rec = start_attempt(run, tr.pending)
    ledger.append(rec)
    ledger.append(apply_outcome(run, tr.pending, EffectOutcome.completed("once"), record=rec).records[0])
    state = rt.tick(workflow=wf, run_id=run_id)
    assert calls == [] and state.status == RunStatus.COMPLETED


def test_effect_types_given_as_plain_strings_work_with_retries(make_runtime, no_sleep):
    """Code that writes Effect(type="tool_calls") (a str, not the enum) still retries and lands."""
    tool = Flaky(1)
    rt = make_runtime(effect_handlers={"tool_calls": tool}, effect_policy=RetryPolicy(tool_max_attempts=2))
    wf = one_effect(Effect(type="tool_calls", payload={}, result_key="r"))  # type: ignore[arg-type]
    state = rt.tick(workflow=wf, run_id=rt.start(workflow=wf))
    assert state.status == RunStatus.COMPLETED and tool.calls == 2 and no_sleep == [1.0]
