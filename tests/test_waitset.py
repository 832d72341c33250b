"""Named waits in the kernel (``runtime/waitset.py``): opening a set, answering its waits,
firing their timers, and the errors each bad input gets, on plain run states (no store).
The same story on Redis and real workers is in ``tests/test_waits_driver.py`` and
``tests/test_waits_acceptance.py``."""

from __future__ import annotations

from typing import Any

import pytest

from runtime import Effect, EffectType, RunState, RunStatus
from runtime.answers import InvalidAnswer
from runtime.waitset import (
    EXPIRED,
    AmbiguousWait,
    AnswerTooLarge,
    InvalidWaitSpec,
    NotAssignee,
    UnknownWait,
    WaitClosed,
    WaitExpired,
    deliver,
    fire_due,
    handle_open_waits,
    n_of,
    next_due_ms,
    open_names,
    open_set,
    target_of,
)

T0 = 1_800_000_000_000  # the opening, epoch ms

LEGAL = {"name": "legal", "prompt": "Approve?", "schema": {"type": "boolean"}, "assignees": ["legal-team"],
         "deadline": "10s", "reminders": ["4s"], "escalation": [{"after": 7, "reassign": ["manager"]}],
         "on_timeout": "fail"}
FINANCE = {"name": "finance", "prompt": "Budget?", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}
COMMENT = {"name": "comment", "prompt": "Anything else?", "schema": {"type": "string"}, "deadline": 6,
           "on_timeout": {"answer": ""}}


def parked(*waits: dict[str, Any], mode: Any = "all") -> RunState:
    run = RunState.new(workflow_id="wf", entry_node="ask", run_id="r1")
    effect = Effect(EffectType.OPEN_WAITS, {"waits": list(waits), "mode": mode}, result_key="answers")
    run.status, run.waiting = RunStatus.WAITING, open_set(run, effect, "after", T0)
    return run


def test_all_mode_resumes_with_every_answer_and_the_default_of_the_expired_one():
    run = parked(LEGAL, FINANCE, COMMENT)
    assert open_names(run.waiting) == ["legal", "finance", "comment"]
    with pytest.raises(InvalidAnswer):
        deliver(run, "legal", "yes", by="ann", now_ms=T0 + 1000)
    assert open_names(run.waiting) == ["legal", "finance", "comment"]  # the refusal changed nothing
    assert next_due_ms(run.waiting) == T0 + 4000
    assert fire_due(run, T0 + 3999).events == []  # never early
    fired = fire_due(run, T0 + 4000)
    assert [e["event"] for e in fired.events] == ["wait.reminder"]
    assert fire_due(run, T0 + 4500).events == []  # once
    assert not deliver(run, "legal", True, by="ann", now_ms=T0 + 5000).resumed
    fired = fire_due(run, T0 + 6000)
    assert [e["event"] for e in fired.events] == ["wait.expired"] and not fired.resumed
    out = deliver(run, "finance", 250, by="bob", now_ms=T0 + 6500)
    assert out.resumed and run.status == RunStatus.RUNNING and run.current_node == "after"
    assert run.vars["answers"] == {"legal": True, "finance": 250, "comment": ""}
    assert out.records[0].effect["type"] == "wait_answer" and out.records[0].actor_id == "bob"
    assert out.records[0].result["answer"] == 250 and out.records[0].result["superseded"] == []


def test_escalation_reassigns_and_raises_the_level():
    run = parked(LEGAL)
    fired = fire_due(run, T0 + 7000)  # the reminder (4 s) and the escalation (7 s), in time order
    assert [e["event"] for e in fired.events] == ["wait.reminder", "wait.escalated"]
    w = run.waiting.details["waits"]["legal"]
    assert w["level"] == 1 and w["assignees"] == ["manager"]
    assert [r.result["timer"] for r in fired.records] == ["legal/reminder/1", "legal/escalation/1"]


def test_any_and_n_of_close_the_rest_as_superseded():
    run = parked(FINANCE, {**FINANCE, "name": "second"}, {**FINANCE, "name": "third"}, mode="any")
    out = deliver(run, "second", 5, by="x", now_ms=T0)
    assert out.resumed and run.vars["answers"] == {"second": 5}
    assert out.records[0].result["superseded"] == ["finance", "third"]
    run = parked(FINANCE, {**FINANCE, "name": "second"}, {**FINANCE, "name": "third"}, mode=n_of(2))
    assert not deliver(run, "third", 1, by="x", now_ms=T0).resumed
    out = deliver(run, "finance", 2, by="y", now_ms=T0)
    assert out.resumed and run.vars["answers"] == {"third": 1, "finance": 2}
    assert out.records[0].result["superseded"] == ["second"]


def test_a_second_answer_to_one_wait_is_refused_naming_the_first():
    run = parked(FINANCE, COMMENT)
    deliver(run, "finance", 3, by="ann", now_ms=T0 + 10, answer_id="a-1")
    with pytest.raises(WaitClosed) as err:
        deliver(run, "finance", 4, by="bob", now_ms=T0 + 20)
    assert err.value.answered_by == "ann" and err.value.at.startswith("2027-01-15T08:00:00.010")
    assert deliver(run, "finance", 3, by="ann", now_ms=T0 + 30, answer_id="a-1").duplicate  # a retried submit


def test_unknown_expired_unassigned_and_oversized_answers_are_refused_naming_the_wait():
    run = parked({**FINANCE, "assignees": ["ann"], "enforce_assignees": True}, COMMENT)
    with pytest.raises(UnknownWait, match=r"no open wait 'legal'; open waits: 'finance', 'comment'"):
        deliver(run, "legal", True, by="ann", now_ms=T0)
    with pytest.raises(NotAssignee, match="'bob' may not answer wait 'finance'"):
        deliver(run, "finance", 1, by="bob", now_ms=T0)
    with pytest.raises(WaitExpired, match="expired"):
        deliver(run, "comment", "late", by="ann", now_ms=T0 + 6000)  # its timer has not fired yet
    with pytest.raises(AnswerTooLarge):
        deliver(run, "comment", "x" * 70_000, by="ann", now_ms=T0)
    assert open_names(run.waiting) == ["finance", "comment"]


def test_respond_with_two_questions_open_is_ambiguous_and_names_them():
    run = parked(FINANCE, COMMENT)
    with pytest.raises(AmbiguousWait, match="finance, comment"):
        target_of(run, "respond", None)
    deliver(run, "finance", 1, by="a", now_ms=T0)
    assert target_of(run, "respond", None) == "comment"
    assert target_of(run, "emit", "user:r1:comment") == "comment"


def test_on_timeout_fail_and_goto():
    run = parked(LEGAL, FINANCE)
    fired = fire_due(run, T0 + 10_000)
    assert fired.fail and "legal" in fired.fail and "deadline" in fired.fail
    run = parked({**FINANCE, "deadline": "1s", "on_timeout": {"goto": "chase"}}, COMMENT)
    fired = fire_due(run, T0 + 1000)
    assert fired.resumed and run.current_node == "chase"
    assert run.vars["answers"] == {"finance": {EXPIRED: "2027-01-15T08:00:01+00:00"}}


def test_a_deadline_in_the_past_is_due_at_once():
    run = parked({**FINANCE, "deadline": "2020-01-01T00:00:00+00:00"})
    assert next_due_ms(run.waiting) < T0
    assert fire_due(run, T0).resumed and run.vars["answers"]["finance"] == {EXPIRED: "2020-01-01T00:00:00+00:00"}


@pytest.mark.parametrize("waits, mode, field", [
    ([FINANCE, FINANCE], "all", "waits[1].name"),
    ([{**FINANCE, "schema": {"type": "string", "pattern": "x"}}], "all", "waits[0].schema"),
    ([{**FINANCE, "deadline": "soon"}], "all", "waits[0].deadline"),
    ([{**FINANCE, "escalation": [{"after": 5}]}], "all", "waits[0].escalation[0]"),
    ([{**FINANCE, "on_timeout": {"answer": "lots"}}], "all", "waits[0].on_timeout.answer"),
    ([{**FINANCE, "kind": "sms"}], "all", "waits[0].kind"),
    ([{"name": "q"}], "all", "waits[0].prompt"),
    ([FINANCE], n_of(2), "mode"),
    ([], "all", "waits"),
])
def test_a_malformed_set_fails_the_effect_naming_the_field(waits, mode, field):
    run = RunState.new(workflow_id="wf", entry_node="ask", run_id="r1")
    with pytest.raises(InvalidWaitSpec) as err:
        open_set(run, Effect(EffectType.OPEN_WAITS, {"waits": waits, "mode": mode}), "after", T0)
    assert err.value.field == field
    outcome = handle_open_waits(run, Effect(EffectType.OPEN_WAITS, {"waits": waits, "mode": mode}), "after")
    assert outcome.status == "failed" and field in (outcome.error or "") and not outcome.retryable
