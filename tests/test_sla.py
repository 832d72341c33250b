"""SLA rules: refused when malformed, and once broken, one alert per run and rule.

First the rules themselves (fast); then the sweep through the stub dispatcher with a loopback
webhook receiver (signed alerts, retries after a timeout or an error status, a sweep that never
waits for the receiver); then real Redis, real Celery worker processes and beat: a workflow
that promises an answer within 5 s, a receiver that gets exactly one signed alert per run, a
``cancel`` rule that cancels, and ``abstractruntime stuck`` listing the run until then.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from runtime.errors import WorkflowError
from workers.alerts import ALERT_ID_HEADER, SIGNATURE_HEADER, body_of, deliveries, sign
from workers.registry import Registry
from workers.settings import WorkerSettings
from workers.sla import InvalidSlaRule, SlaRule
from workers.testing import make_stub_engine

from support import sla_scenarios
from support.processes import until

pytestmark = pytest.mark.timeout(120)

SECRET = "s3cret-for-tests"


# -- the rules --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"name": ""}, "name"),
    ({"name": "has space"}, "name"),
    ({"name": "r", "max_waiting_s": {"usr": 5}}, "max_waiting_s['usr']"),
    ({"name": "r", "max_waiting_s": {"user": -1}}, "max_waiting_s['user']"),
    ({"name": "r", "max_waiting_s": float("inf")}, "max_waiting_s"),
    ({"name": "r", "max_running_s": "10"}, "max_running_s"),
    ({"name": "r", "max_total_s": 0}, "max_total_s"),
    ({"name": "r"}, "max_running_s"),  # no limit at all
    ({"name": "r", "max_total_s": 5, "action": "page"}, "action"),
    ({"name": "r", "max_total_s": 5, "action": "webhook"}, "url"),
    ({"name": "r", "max_total_s": 5, "action": "webhook", "url": "ftp://x/y"}, "url"),
    ({"name": "r", "max_total_s": 5, "action": "cancel", "url": "http://x/y"}, "url"),
])
def test_a_malformed_rule_is_refused_naming_the_field(kwargs, field):
    with pytest.raises(InvalidSlaRule) as caught:
        SlaRule(**kwargs)
    assert caught.value.field == field and field in str(caught.value)
    assert isinstance(caught.value, (ValueError, WorkflowError))


def test_registration_refuses_bad_rules_and_names_the_workflow():
    reg = Registry()
    with pytest.raises(InvalidSlaRule, match=r"workflow 'wf': max_waiting_s\['nap'\]"):
        reg.register_sla("wf", {"name": "r", "max_waiting_s": {"nap": 3}})
    with pytest.raises(InvalidSlaRule, match="workflow 'wf': max_wait: unknown field") as caught:
        reg.register_sla("wf", {"name": "r", "max_wait": 3})
    assert caught.value.field == "max_wait" and caught.value.workflow_id == "wf"
    with pytest.raises(InvalidSlaRule, match="workflow_id"):
        reg.register_sla("", SlaRule("r", max_total_s=1))
    rule = reg.register_sla("wf", SlaRule("late", max_waiting_s=60, action="cancel"))
    assert reg.register_sla("wf", SlaRule("late", max_waiting_s=60, action="cancel")) == rule  # same again: fine
    with pytest.raises(InvalidSlaRule, match="name: a rule of this name is registered already"):
        reg.register_sla("wf", SlaRule("late", max_waiting_s=30, action="cancel"))
    reg.register_sla("wf", SlaRule("late", max_waiting_s=30, action="fail"), replace=True)
    assert [r.to_dict() for r in reg.sla_rules("wf")] == [{
        "name": "late", "action": "fail", "max_running_s": None, "max_total_s": None, "url": None,
        "max_waiting_s": {"event": 30.0, "until": 30.0, "user": 30.0, "job": 30.0, "subworkflow": 30.0}}]
    assert reg.sla_rules("other") == ()


def test_signature_is_the_hmac_of_the_body():
    alert = {"alert_id": "r-1 late", "rule": "late", "run_id": "r-1", "state": "pending", "attempts": 2,
             "url": "http://127.0.0.1/x"}
    body = body_of(alert)
    assert json.loads(body) == {"type": "sla.breached", "alert_id": "r-1 late", "rule": "late", "run_id": "r-1"}
    assert body_of({**alert, "attempts": 3, "last_error": "x"}) == body  # the same bytes on every attempt
    assert sign(SECRET, body) == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


# -- a loopback receiver -------------------------------------------------------------------------------


class Receiver:
    """An HTTP server on 127.0.0.1 that keeps every request; ``plan`` says how to answer the
    first ones (``"hang"``: wait ``hang_s`` then answer, ``500``: an error status), then 200."""

    def __init__(self, plan: list[Any] | None = None, hang_s: float = 3.0) -> None:
        self.got: list[dict[str, Any]] = []
        self.plan = list(plan or [])
        self.hang_s = hang_s
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    receiver.got.append({"headers": dict(self.headers), "body": body})
                    step = receiver.plan.pop(0) if receiver.plan else 200
                if step == "hang":
                    time.sleep(receiver.hang_s)
                    step = 200
                self.send_response(int(step))
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/sla"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def verified(self) -> list[dict[str, Any]]:
        """The requests whose signature is right, as their JSON bodies; fails on a wrong one."""
        out = []
        for req in list(self.got):
            headers = {k.lower(): v for k, v in req["headers"].items()}
            expected = "sha256=" + hmac.new(SECRET.encode(), req["body"], hashlib.sha256).hexdigest()
            assert hmac.compare_digest(headers[SIGNATURE_HEADER.lower()], expected), "bad signature"
            body = json.loads(req["body"])
            assert headers[ALERT_ID_HEADER.lower()] == body["alert_id"]
            out.append(body)
        return out


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(**kwargs: Any) -> Receiver:
        made.append(Receiver(**kwargs))
        return made[-1]

    yield make
    for r in made:
        r.close()


# -- the sweep, through the stub dispatcher ------------------------------------------------------------


def test_one_signed_alert_per_run_after_a_timeout_and_an_error(store, receiver):
    # Given a receiver that hangs past the webhook's timeout on the first request, then answers
    # 500, then 200; and two runs of a workflow promising an answer within 0.3 s
    hook = receiver(plan=["hang", 500], hang_s=4.0)
    reg = Registry()
    sla_scenarios.register(reg, url=hook.url, max_waiting_s=0.3)
    settings = WorkerSettings(sla_webhook_secret=SECRET, sla_webhook_timeout_s=1.0, sla_webhook_attempts=5)
    engine, stub = make_stub_engine(store, reg, settings)
    runs = [engine.create(reg.workflows.get("sla_ask_webhook")) for _ in range(2)]
    stub.run_until_quiet(engine)
    # If the sweep runs while the receiver hangs, I expect it never to wait for the receiver
    longest = 0.0

    def swept() -> Any:
        nonlocal longest
        started = time.monotonic()
        engine.sweep()
        longest = max(longest, time.monotonic() - started)
        ok = [b for b in hook.verified()]
        return len({b["run_id"] for b in ok}) == 2 and len(hook.got) >= 4 and deliveries().wait(0)

    assert until(swept, timeout=30, every=0.2), hook.got
    assert longest < 3.0, f"a sweep took {longest:.1f} s: it waited for the receiver"
    # and exactly one alert accepted per run: the two retried ones were the same alert again
    for _ in range(5):
        engine.sweep()
    deliveries().wait(10)
    bodies = hook.verified()
    ids = [b["alert_id"] for b in bodies]
    assert sorted(set(ids)) == sorted(f"{rid} answer-webhook" for rid in runs)
    assert len(bodies) == 4  # one timed out, one got 500, then one 200 for each run
    attempts = sorted(int({k.lower(): v for k, v in r["headers"].items()}["x-abstractruntime-attempt"])
                      for r in hook.got)
    assert attempts == [1, 1, 2, 3] or attempts == [1, 1, 2, 2], attempts
    body = bodies[-1]
    assert body["limit"] == "max_waiting_s[user]" and body["limit_s"] == 0.3 and body["cause"] == "WAITING_USER"
    alerts = store.sla_alerts_of(ids)
    assert {a["state"] for a in alerts.values()} == {"done"} and store.count_pending_alerts() == 0
    assert [store.runs.load(r).status for r in runs] == ["waiting", "waiting"]  # a webhook changes nothing


def test_no_secret_no_webhook_and_cancel_fail_are_recorded(store, receiver):
    hook = receiver()
    reg = Registry()
    sla_scenarios.register(reg, url=hook.url, max_waiting_s=0.2)
    engine, stub = make_stub_engine(store, reg, WorkerSettings())  # no sla_webhook_secret
    runs = {a: engine.create(reg.workflows.get(f"sla_ask_{a}")) for a in ("webhook", "cancel", "fail")}
    stub.run_until_quiet(engine)

    webhook_alert = f"{runs['webhook']} answer-webhook"

    def over() -> bool:
        engine.sweep()
        deliveries().wait(5)
        alert = store.sla_alert(webhook_alert) or {}
        return alert.get("state") == "failed" and store.runs.load(runs["fail"]).status == "failed"

    assert until(over, timeout=20, every=0.1)
    alerts = store.sla_alerts_of([webhook_alert])
    # The alerts of the runs the rules ended are forgotten once their action is done
    assert store.sla_alerts_of([f"{runs[a]} answer-{a}" for a in ("cancel", "fail")]) == {}
    assert "ABSTRACTRUNTIME_SLA_WEBHOOK_SECRET" in alerts[webhook_alert]["last_error"]
    assert hook.got == []  # nothing unsigned ever leaves
    assert store.runs.load(runs["cancel"]).status == "cancelled"
    failed = store.runs.load(runs["fail"])
    assert failed.status == "failed" and "answer-fail" in failed.error
    for action in ("cancel", "fail"):
        last = store.ledger.list(runs[action])[-1]
        assert last["effect"]["type"] == f"operator_{action}" and last["actor_id"] == f"sla:answer-{action}"
    assert store.ledger.verify(runs["cancel"])["ok"]


# -- real workers and beat -----------------------------------------------------------------------------


CLI = str(Path(sys.executable).with_name("abstractruntime"))
TESTS_DIR = Path(__file__).resolve().parent


def cli(group: Any, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_") and k != "PYTHONPATH"}
    env.update(group.env, PYTHONPATH=str(TESTS_DIR))
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=60)


def test_real_workers_alert_once_cancel_and_list_stuck_runs(redis_server, tmp_path, receiver):
    from support.celery_workers import WorkerGroup
    from support.cli import ok

    # Given a deployment (a worker, beat) whose workflows promise an answer within 5 s, one with
    # a webhook rule, one with a cancel rule; questions unanswered for 1 s are listed as stuck
    hook = receiver()
    g = WorkerGroup(redis_server.url, tmp_path / "g", imports="support.celery_scenarios,support.sla_scenarios",
                    sla_webhook_secret=SECRET, stuck_waiting_user_s=1, stuck_recheck_s=1)
    g.env["SLA_TEST_WEBHOOK_URL"] = hook.url
    client = None
    try:
        g.start_worker("w1")
        g.start_beat()
        from workers.client import Client

        own = Registry()  # this process's copy of what the workers registered
        sla_scenarios.register(own, url=hook.url)
        client = Client(g.settings(), reg=own)
        alerted = [client.start("sla_ask_webhook") for _ in range(2)]
        doomed = client.start("sla_ask_cancel")
        for rid in [*alerted, doomed]:
            client.wait_for(rid, ["waiting"], timeout=30)
        # I expect `stuck` to list the run under its cause until the cancel rule cancels it
        listed = until(lambda: doomed in [r["run_id"] for r in
                                          ok(cli(g, "stuck", "--json"))["causes"].get("WAITING_USER", [])],
                       timeout=30, every=0.3)
        assert listed, cli(g, "stuck").stdout
        assert client.get_state(doomed).status == "waiting"
        human = cli(g, "stuck", "--cause", "WAITING_USER")
        assert human.returncode == 0 and "WAITING_USER (" in human.stdout and alerted[0] in human.stdout
        # and the cancel rule to cancel it, recorded as the rule's decision
        client.wait_for(doomed, ["cancelled"], timeout=30)
        last = client.get_ledger(doomed)[-1]
        assert last["effect"]["type"] == "operator_cancel" and last["actor_id"] == "sla:answer-cancel"
        assert client.verify(doomed)["ok"]
        assert until(lambda: doomed not in json.dumps(ok(cli(g, "stuck", "--json"))), timeout=30, every=0.3)
        # and the receiver to get exactly one signed alert per run
        assert until(lambda: len(hook.got) >= 2, timeout=30), hook.got
        time.sleep(3)  # a few more sweeps: no second alert
        bodies = hook.verified()
        assert sorted(b["run_id"] for b in bodies) == sorted(alerted), bodies
        assert {b["rule"] for b in bodies} == {"answer-webhook"} and {b["limit_s"] for b in bodies} == {5.0}
        # doctor counts them as a warning
        doctor = json.loads(cli(g, "doctor", "--json").stdout)
        check = next(c for c in doctor["checks"] if c["check"] == "stuck runs")
        assert check["status"] == "warn" and "2 WAITING_USER" in check["detail"]
        # When the questions are answered, the runs end and are no longer listed
        for rid in alerted:
            client.respond(rid, "yes")
            client.wait_for(rid, ["completed"], timeout=30)
        assert until(lambda: ok(cli(g, "stuck", "--json"))["total"] == 0, timeout=60, every=0.5)
    finally:
        if client is not None:
            client.close()
        g.close()
