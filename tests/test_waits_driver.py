"""Named waits through the Celery driver's engine and the producer API, in process: the stub
dispatcher carries the messages, the store is a real redis-server and fakeredis. Timers are
judged by the Redis clock, so these use deadlines of a fraction of a second and real sleeps.
The same stories on real worker processes and beat: ``tests/test_waits_acceptance.py``.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from runtime import RunStatus
from runtime.answers import InvalidAnswer
from runtime.errors import RunNotWaiting
from runtime.waitset import (
    EXPIRED,
    AmbiguousWait,
    AnswerTooLarge,
    NotAssignee,
    UnknownWait,
    WaitClosed,
    WaitExpired,
    n_of,
)
from workers.client import Client
from workers.settings import WorkerSettings
from workers.testing import StubDispatcher

import support.celery_scenarios  # noqa: F401  (registers ask)
import support.wait_scenarios  # noqa: F401  (registers named_waits and tree_of_waits)
from support.driver_compare import delivery_records

pytestmark = pytest.mark.timeout(60)

#: The acceptance set at a tenth of its times: reminder 0.4 s, escalation 0.7 s, deadlines 1 s and 0.6 s.
LEGAL = {"name": "legal", "prompt": "Approve?", "schema": {"type": "boolean"}, "assignees": ["legal-team"],
         "deadline": "1s", "reminders": ["400ms"], "escalation": [{"after": "700ms", "reassign": ["manager"]}],
         "on_timeout": "fail"}
FINANCE = {"name": "finance", "prompt": "Budget?", "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
           "assignees": ["finance-team"]}
COMMENT = {"name": "comment", "prompt": "Comment?", "schema": {"type": "string"}, "deadline": "600ms",
           "on_timeout": {"answer": ""}, "assignees": ["legal-team"]}


@pytest.fixture
def client(store: Any) -> tuple[Client, StubDispatcher]:
    stub = StubDispatcher()
    return Client(WorkerSettings(), backend=store, dispatcher=stub), stub


def start(client: Client, stub: StubDispatcher, waits: list[dict[str, Any]], mode: Any = "all") -> str:
    run_id = client.start("named_waits", vars={"waits": waits, "mode": mode})
    stub.run_until_quiet(client.engine)
    assert client.get_state(run_id).status == RunStatus.WAITING
    return run_id


def wait_events(client: Client, run_id: str) -> list[tuple[str, str]]:
    entries = client.backend.client.xrange(client.backend.keys.events())
    out = []
    for _id, fields in entries:
        f = {k.decode(): v.decode() for k, v in fields.items()}
        if f.get("run_id") == run_id and f.get("event", "").startswith("wait."):
            assert json.loads(f["data"])["wait"] == f["wait"]
            out.append((f["event"], f["wait"]))
    return out


def sleep_past(client: Client, run_id: str, seconds: float) -> None:
    """Sleep until the Redis clock is ``seconds`` past the run's last update."""
    opened = min(w["opened_ms"] for w in client.get_state(run_id).waiting.details["waits"].values())
    while client.backend.time_ms() < opened + seconds * 1000:
        time.sleep(0.02)


def test_three_waits_refuse_a_bad_answer_remind_escalate_default_and_resume_with_all(client):
    client, stub = client
    run_id = start(client, stub, [LEGAL, FINANCE, COMMENT])
    assert [w["wait"] for w in client.list_waits(assignee="legal-team")] == ["comment", "legal"]  # soonest first
    ledger = client.get_ledger(run_id)
    with pytest.raises(InvalidAnswer, match="must be boolean"):
        client.answer(run_id, "legal", "yes", "ann")
    assert client.get_ledger(run_id) == ledger  # refused: nothing written
    client.answer(run_id, "finance", 250, "bob")
    assert client.get_state(run_id).status == RunStatus.WAITING
    sleep_past(client, run_id, 0.75)  # past the reminder, the comment's deadline and the escalation
    stub.wake_due(client.engine)
    state = client.get_state(run_id)
    assert state.status == RunStatus.WAITING
    [legal] = client.list_waits(assignee="manager")
    assert legal["wait"] == "legal" and legal["level"] == 1 and not legal["overdue"]
    assert client.list_waits(assignee="legal-team") == []  # reassigned; the comment expired
    client.answer(run_id, "legal", True, "meg")
    stub.run_until_quiet(client.engine)
    state = client.get_state(run_id)
    assert state.status == RunStatus.COMPLETED
    assert state.output["answers"] == {"finance": 250, "comment": "", "legal": True}
    assert delivery_records(client.get_ledger(run_id)) == [
        ("wait_answer", "finance", 250), ("wait_reminder", "legal", None), ("wait_expired", "comment", None),
        ("wait_escalated", "legal", None), ("wait_answer", "legal", True)]
    assert [r["actor_id"] for r in client.get_ledger(run_id) if r["effect"] and
            r["effect"]["type"] == "wait_answer"] == ["bob", "meg"]
    assert client.verify(run_id)["ok"]
    assert wait_events(client, run_id) == [
        ("wait.opened", "legal"), ("wait.opened", "finance"), ("wait.opened", "comment"),
        ("wait.answered", "finance"), ("wait.reminder", "legal"), ("wait.expired", "comment"),
        ("wait.escalated", "legal"), ("wait.answered", "legal")]
    assert client.list_waits() == []


def test_a_duplicate_wake_fires_nothing_twice(client):
    client, stub = client
    run_id = start(client, stub, [LEGAL])
    sleep_past(client, run_id, 0.45)
    engine = client.engine
    assert engine.wake(run_id) == "fired"
    assert engine.wake(run_id) == "early"  # the next timer (the escalation) is not due
    assert [t for t, *_ in delivery_records(client.get_ledger(run_id))] == ["wait_reminder"]


def test_a_deadline_with_on_timeout_fail_fails_the_run(client):
    client, stub = client
    run_id = start(client, stub, [{**LEGAL, "reminders": [], "escalation": []}])
    sleep_past(client, run_id, 1.0)
    stub.wake_due(client.engine)
    state = client.get_state(run_id)
    assert state.status == RunStatus.FAILED and "'legal' passed its deadline" in state.error
    assert client.list_waits(assignee="legal-team") == [] and client.list_waits(overdue=True) == []
    with pytest.raises(WaitClosed, match="expired"):
        client.answer(run_id, "legal", True, "ann")


@pytest.mark.parametrize("mode, answers, superseded", [
    ("any", [("b", 2)], ["a", "c"]),
    (n_of(2), [("c", 3), ("a", 1)], ["b"]),
])
def test_any_and_n_of_resume_at_the_right_answer_and_supersede_the_rest(client, mode, answers, superseded):
    client, stub = client
    waits = [{**FINANCE, "name": n} for n in "abc"]
    run_id = start(client, stub, waits, mode)
    for name, value in answers:
        assert client.get_state(run_id).status == RunStatus.WAITING
        client.answer(run_id, name, value, "ann")
    stub.run_until_quiet(client.engine)
    state = client.get_state(run_id)
    assert state.status == RunStatus.COMPLETED and state.output["answers"] == dict(answers)
    last = [r for r in client.get_ledger(run_id) if (r["effect"] or {}).get("type") == "wait_answer"][-1]
    assert last["result"]["superseded"] == superseded and last["result"]["resumed"] is True
    with pytest.raises(WaitClosed, match="superseded"):
        client.answer(run_id, superseded[0], 1, "ann")
    assert client.list_waits(assignee="finance-team") == []


def test_a_second_answer_to_one_wait_is_refused_and_a_retried_submit_is_not(client):
    client, stub = client
    run_id = start(client, stub, [FINANCE, COMMENT])
    client.answer(run_id, "finance", 5, "ann", answer_id="submit-1")
    client.answer(run_id, "finance", 5, "ann", answer_id="submit-1")  # the retry after a lost reply
    with pytest.raises(WaitClosed) as err:
        client.answer(run_id, "finance", 6, "bob")
    assert err.value.answered_by == "ann"
    assert [t for t, *_ in delivery_records(client.get_ledger(run_id))] == ["wait_answer"]
    # once the set is over, the ledger still tells who answered
    client.answer(run_id, "comment", "fine", "ann")
    stub.run_until_quiet(client.engine)
    with pytest.raises(WaitClosed) as err:
        client.answer(run_id, "finance", 7, "bob")
    assert err.value.answered_by == "ann"
    with pytest.raises(WaitClosed):  # the same answer again, without an answer_id: a second answer
        client.answer(run_id, "comment", "fine", "ann")


def test_respond_is_ambiguous_with_two_questions_and_unknown_waits_are_named(client):
    client, stub = client
    run_id = start(client, stub, [FINANCE, COMMENT])
    ledger = client.get_ledger(run_id)
    with pytest.raises(AmbiguousWait, match="finance, comment"):
        client.respond(run_id, 5)
    with pytest.raises(UnknownWait, match="no open wait 'legal'; open waits: 'finance', 'comment'"):
        client.answer(run_id, "legal", True, "ann")
    assert client.get_ledger(run_id) == ledger
    client.answer(run_id, "finance", 5, "ann")
    client.respond(run_id, "ok", by="zoe")  # one question left: respond answers it
    stub.run_until_quiet(client.engine)
    assert client.get_state(run_id).output["answers"] == {"finance": 5, "comment": "ok"}


def test_an_event_wait_in_a_set_is_reached_by_emit(client):
    client, stub = client
    run_id = start(client, stub, [FINANCE, {"name": "paid", "kind": "event", "wait_key": "invoice:7"}])
    assert client.emit("invoice:7", {"amount": 3}, by="billing") == [run_id]
    assert client.emit("invoice:7", {"amount": 3}) == []  # closed: an event reaches open waits only
    client.answer(run_id, "finance", 9, "ann")
    stub.run_until_quiet(client.engine)
    assert client.get_state(run_id).output["answers"] == {"paid": {"amount": 3}, "finance": 9}
    assert delivery_records(client.get_ledger(run_id))[0] == ("wait_emit", "paid", {"amount": 3})


def test_a_late_answer_is_refused_before_the_deadline_fires(client):
    client, stub = client
    run_id = start(client, stub, [{**FINANCE, "deadline": "300ms", "on_timeout": {"goto": "chase"}}, COMMENT])
    sleep_past(client, run_id, 0.3)
    ledger = client.get_ledger(run_id)
    with pytest.raises(WaitExpired):  # its wake has not been delivered yet: the deadline decides
        client.answer(run_id, "finance", 5, "ann")
    assert client.get_ledger(run_id) == ledger
    stub.wake_due(client.engine)
    state = client.get_state(run_id)
    assert state.status == RunStatus.COMPLETED and state.output["chased"] is True
    assert list(state.output["answers"]["finance"]) == [EXPIRED]


def test_a_deadline_in_the_past_expires_at_once(client):
    client, stub = client
    run_id = client.start("named_waits", vars={"waits": [{**FINANCE, "deadline": "2020-01-01T00:00:00Z"}]})
    stub.run_until_quiet(client.engine)  # the park sends a wake due now
    state = client.get_state(run_id)
    assert state.status == RunStatus.COMPLETED
    assert state.output["answers"] == {"finance": {EXPIRED: "2020-01-01T00:00:00+00:00"}}


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_waits_of_a_child_are_listed_under_the_root_and_cancel_clears_them(client, is_async):
    client, stub = client
    root = client.start("tree_of_waits", vars={"waits": [FINANCE, COMMENT], "async": is_async})
    stub.run_until_quiet(client.engine)
    listed = client.list_waits(root_run_id=root)
    assert sorted(w["wait"] for w in listed) == ["comment", "finance"]  # opened in the same ms
    child = listed[0]["run_id"]
    assert child != root and listed[0]["root_run_id"] == root and listed[0]["parent_run_id"] == root
    assert len(client.list_waits(workflow="named_waits")) == 2
    client.cancel(root, reason="no longer needed")
    assert client.list_waits(root_run_id=root) == [] and client.list_waits() == []
    with pytest.raises((UnknownWait, RunNotWaiting)):
        client.answer(child, "finance", 5, "ann")


def test_a_stale_index_entry_is_dropped_when_read(client):
    client, stub = client
    run_id = start(client, stub, [FINANCE])
    # as if the process died between the commit that closed the wait and the index removal
    entries = client.backend.wait_entries(client.get_state(run_id))
    client.answer(run_id, "finance", 5, "ann")
    client.backend.put_wait_entries(entries)
    assert client.list_waits(assignee="finance-team") == []
    assert client.backend.client.zcard(client.backend.keys.waits_of("finance-team")) == 0


class _Receiver(BaseHTTPRequestHandler):
    got: list[tuple[Any, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 (the http.server name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).got.append((self.headers, body))  # header names compare case-insensitively
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_wait_events_are_posted_signed_to_the_webhook_once(store):
    from workers.alerts import SIGNATURE_HEADER, deliveries, sign

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.got = []
    try:
        settings = WorkerSettings(waits_webhook_url=f"http://127.0.0.1:{server.server_port}/hooks",
                                  sla_webhook_secret="hook-secret")
        stub = StubDispatcher()
        client = Client(settings, backend=store, dispatcher=stub)
        client.engine.sweep()  # the first sweep starts reading the events from now
        run_id = start(client, stub, [FINANCE, COMMENT])
        client.answer(run_id, "finance", 3, "ann")
        client.engine.sweep()
        client.engine.sweep()  # a second sweep schedules nothing again
        assert deliveries().wait(10)
        bodies = []
        for headers, body in _Receiver.got:
            assert headers[SIGNATURE_HEADER] == sign("hook-secret", body)
            bodies.append(json.loads(body))
        # posted by a pool of threads: in any order, each once
        assert sorted((b["type"], b["wait"], b["run_id"]) for b in bodies) == [
            ("wait.answered", "finance", run_id), ("wait.opened", "comment", run_id),
            ("wait.opened", "finance", run_id)]
        [answered] = [b for b in bodies if b["type"] == "wait.answered"]
        assert answered["by"] == "ann" and "url" not in answered
        assert store.count_pending_alerts() == 0 and not store.client.hlen(store.keys.sla_alerts())
    finally:
        server.shutdown()
        server.server_close()


def test_an_unassigned_answerer_and_an_oversized_answer_are_refused_and_change_nothing(client):
    client, stub = client
    run_id = start(client, stub, [{**FINANCE, "assignees": ["ann"], "enforce_assignees": True},
                                  {"name": "notes", "prompt": "Notes?"}])
    ledger = client.get_ledger(run_id)
    with pytest.raises(NotAssignee, match="'bob' may not answer wait 'finance'"):
        client.answer(run_id, "finance", 5, "bob")
    with pytest.raises(AnswerTooLarge, match="at most 65536"):
        client.answer(run_id, "notes", "x" * 70_000, "bob")
    assert client.get_ledger(run_id) == ledger
    client.answer(run_id, "notes", "x" * 5000, "bob")  # large, but allowed: the ledger keeps its digest
    [(kind, wait, kept)] = delivery_records(client.get_ledger(run_id))
    assert kept == {"sha256": kept["sha256"], "bytes": 5002} and len(kept["sha256"]) == 64
    assert client.get_state(run_id).waiting.details["answers"]["notes"] == "x" * 5000


def test_explain_names_the_open_waits_and_the_next_timer(client):
    from workers.explain import Code
    from workers.fleet import explain_run

    client, stub = client
    run_id = start(client, stub, [LEGAL, FINANCE])
    client.answer(run_id, "finance", 5, "ann")
    d = explain_run(client.backend, client.settings, run_id)
    assert d.code is Code.WAITING_USER and d.evidence["waits"] == ["legal"]
    assert "all 2 of its named waits (open: legal)" in d.sentence and "next reminder" in d.sentence
    assert d.action.startswith(f"abstractruntime answer {run_id} legal --payload JSON")


def test_a_single_question_is_answered_by_its_wait_key_and_named_when_another_name_is_used(client):
    client, stub = client
    run_id = client.start("ask")
    stub.run_until_quiet(client.engine)
    key = client.get_state(run_id).waiting.wait_key
    with pytest.raises(UnknownWait, match=f"open waits: '{key}'"):
        client.answer(run_id, "legal", "y", "ann")
    client.answer(run_id, key, "y", "ann")
    stub.run_until_quiet(client.engine)
    assert client.get_state(run_id).output["answer"] == "y"
    assert delivery_records(client.get_ledger(run_id)) == [("wait_resume", key, "y")]
