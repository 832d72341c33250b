"""The run console over HTTP (issue 17): a real uvicorn server on loopback, a real Redis, the
client's stub dispatcher moving the runs. The browser tests are in ``test_console_browser.py``."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from runtime import RunStatus
from workers.client import Client
from workers.settings import WorkerSettings
from workers.testing import StubDispatcher

from support import console_scenarios
from support.backends import redis_backend
from support.console_server import TOKEN, ConsoleServer, csrf_of, login, write_auth_file

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def deployment(redis_server: Any, tmp_path: Any) -> Any:
    stub = StubDispatcher()
    client = Client(WorkerSettings(run_attrs="customer"), backend=redis_backend(redis_server.client()),
                    dispatcher=stub)
    console_scenarios.register(client.registry)
    with ConsoleServer(client, write_auth_file(tmp_path)) as server, \
            httpx.Client(base_url=server.url, follow_redirects=False, timeout=10) as http:
        yield client, stub, server, http


def open_run(deployment: Any, workflow: str, user: str, **vars: Any) -> tuple[str, str, str]:
    """Start a run of ``workflow`` and move it as far as it goes; log in as ``user`` and open its
    page: (run id, the page, its CSRF token)."""
    client, stub, _server, http = deployment
    run_id = client.start(workflow, vars=vars or None)
    stub.run_until_quiet(client.engine)
    login(http, user)
    page = http.get(f"/runs/{run_id}").text
    return run_id, page, csrf_of(page)


def test_no_session_goes_to_login_and_a_wrong_password_stays_there(deployment):
    client, stub, server, http = deployment
    response = http.get("/runs")
    assert response.status_code == 303 and response.headers["location"].startswith("/login?next=%2Fruns")
    wrong = http.post("/login", data={"user": "op", "password": "nope"})
    assert wrong.status_code == 401 and "Wrong user name or password." in wrong.text
    assert "ar_session" not in http.cookies
    login(http, "op")
    cookie = next(c for c in http.cookies.jar if c.name == "ar_session")
    assert cookie.has_nonstandard_attr("HttpOnly") and "strict" in str(cookie._rest.get("SameSite", "")).lower()
    page = http.get("/runs")
    assert page.status_code == 200 and "op · operator" in page.text
    # every page forbids inline script
    assert "script-src 'self'" in page.headers["content-security-policy"] and "unsafe-inline" not in \
        page.headers["content-security-policy"]
    # a forged cookie is no session
    http.cookies.set("ar_session", cookie.value[:-2] + "00")
    assert http.get("/runs").status_code == 303


def test_the_runs_list_counts_and_filters(deployment):
    client, stub, server, http = deployment
    done = [client.start("approve") for _ in range(2)]
    for run_id in done:
        stub.run_until_quiet(client.engine)
        client.respond(run_id, {"amount": 5})
    waiting = [client.start("approve", attrs={"customer": c}) for c in ("c-1", "c-2", "c-2")]
    stub.run_until_quiet(client.engine)
    login(http, "vi")
    page = http.get("/runs").text
    assert re.search(r'data-status="waiting">waiting <b>3</b>', page)
    assert re.search(r'data-status="completed">completed <b>2</b>', page)
    only = http.get("/runs", params={"status": "waiting"}).text
    assert sorted(re.findall(r'<tr data-run="([^"]+)"', only)) == sorted(waiting)
    by_reason = http.get("/runs", params={"wait_reason": "user", "workflow": "approve"}).text
    assert sorted(re.findall(r'<tr data-run="([^"]+)"', by_reason)) == sorted(waiting)
    by_attr = http.get("/runs", params={"attr": "customer=c-2"}).text
    assert sorted(re.findall(r'<tr data-run="([^"]+)"', by_attr)) == sorted(waiting[1:])
    both = http.get("/runs", params={"attr": "customer=c-2", "status": "completed"}).text
    assert re.findall(r'<tr data-run="([^"]+)"', both) == []
    # malformed filters: a message, not a 500
    for params, said in (({"status": "sleeping"}, "status &#39;sleeping&#39; is not one of"),
                         ({"since": "yesterday"}, "since &#39;yesterday&#39; is not a date"),
                         ({"attr": "customer"}, "is not name=value"),
                         ({"cursor": "x:y"}, "is not one this page made")):
        bad = http.get("/runs", params=params)
        assert bad.status_code == 400 and said in bad.text, (params, bad.text[-500:])


def test_pages_of_runs_follow_the_cursor(deployment):
    client, stub, server, http = deployment
    ids = {client.start("waiter") for _ in range(60)}
    login(http, "vi")
    first = http.get("/runs", params={"workflow": "waiter"}).text
    shown = re.findall(r'<tr data-run="([^"]+)"', first)
    assert len(shown) == 50
    next_url = re.search(r'<a class="next" href="([^"]+)"', first).group(1).replace("&amp;", "&")
    second = re.findall(r'<tr data-run="([^"]+)"', http.get(next_url).text)
    assert len(second) == 10 and set(shown) | set(second) == ids and not set(shown) & set(second)


def test_an_unknown_run_is_a_404_page(deployment):
    client, stub, server, http = deployment
    login(http, "vi")
    response = http.get("/runs/no-such-run")
    assert response.status_code == 404 and "There is no run" in response.text


def test_actions_need_the_csrf_token_and_an_operator(deployment):
    client, stub, server, http = deployment
    run_id, page, token = open_run(deployment, "waiter", "vi")
    assert http.post(f"/runs/{run_id}/cancel", json={}).status_code == 403  # no token
    viewer = http.post(f"/runs/{run_id}/cancel", json={}, headers={"X-CSRF-Token": token})
    assert viewer.status_code == 403 and "operators only" in viewer.json()["error"]
    assert client.get_state(run_id).status == RunStatus.WAITING
    # a bearer token of a viewer reads, and cannot act
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as bot:
        assert bot.get(f"/runs/{run_id}").status_code == 200
        assert bot.post(f"/runs/{run_id}/cancel", json={}).status_code == 403
    # an operator cancels; the ledger says who
    http.cookies.clear()
    login(http, "op")
    token = csrf_of(http.get(f"/runs/{run_id}").text)
    done = http.post(f"/runs/{run_id}/cancel", json={"reason": "not needed"}, headers={"X-CSRF-Token": token})
    assert done.status_code == 200 and done.json() == {"ok": True}
    assert client.get_state(run_id).status == RunStatus.CANCELLED
    assert any(r.get("actor_id") == "op" for r in client.get_ledger(run_id))


def test_an_answer_with_the_schema_error_then_the_right_one(deployment):
    client, stub, server, http = deployment
    run_id, page, token = open_run(deployment, "approve", "op")
    assert 'name="field:amount"' in page and "How much?" in page
    bad = http.post(f"/runs/{run_id}/answer", json={"answer": {"amount": 0}}, headers={"X-CSRF-Token": token})
    assert bad.status_code == 400 and "amount" in bad.json()["error"] and "must be at least 1" in bad.json()["error"]
    assert client.get_state(run_id).status == RunStatus.WAITING
    ok = http.post(f"/runs/{run_id}/answer", json={"answer": {"amount": 7}}, headers={"X-CSRF-Token": token})
    assert ok.status_code == 200, ok.text
    stub.run_until_quiet(client.engine)
    state = client.get_state(run_id)
    assert state.status == RunStatus.COMPLETED and state.output == {"amount": 7}


def test_retry_after_the_fix_and_verify(deployment):
    client, stub, server, http = deployment
    console_scenarios.FIXED["on"] = False
    run_id, page, token = open_run(deployment, "flaky", "op")
    assert client.get_state(run_id).status == RunStatus.FAILED
    assert "the upstream answered 500" in page and 'data-action="retry"' in page
    assert http.post(f"/runs/{run_id}/retry", json={}, headers={"X-CSRF-Token": token}).status_code == 400
    console_scenarios.FIXED["on"] = True
    try:
        again = http.post(f"/runs/{run_id}/retry", json={"reason": "upstream fixed"}, headers={"X-CSRF-Token": token})
        assert again.status_code == 200, again.text
        stub.run_until_quiet(client.engine)
    finally:
        console_scenarios.FIXED["on"] = False
    assert client.get_state(run_id).status == RunStatus.COMPLETED
    verified = http.post(f"/runs/{run_id}/verify", json={}, headers={"X-CSRF-Token": token}).json()
    assert verified["ok"] is True and verified["count"] == len(client.get_ledger(run_id))
    # a record edited in Redis: verify names it
    backend = client.backend
    entries = backend.client.xrange(backend.keys.ledger(run_id))
    entry_id, fields = entries[1]
    backend.client.xdel(backend.keys.ledger(run_id), entry_id)  # (a stream entry cannot be edited in place)
    broken = http.post(f"/runs/{run_id}/verify", json={}, headers={"X-CSRF-Token": token}).json()
    assert broken["ok"] is False and broken["first_bad_index"] == 1


def test_values_are_text_and_big_payloads_are_cut(deployment):
    client, stub, server, http = deployment
    nasty = {"a": "<script>alert(1)</script>", "b": '"><img src=x onerror=alert(2)>', "password": "hunter2-xyz",
             "big": "x" * 5_000_000}
    run_id = client.start("waiter", vars=nasty)
    stub.run_until_quiet(client.engine)
    client.emit(f"go:{run_id}", {"blob": "y" * 5_000_000, "note": "<script>alert(3)</script>"})
    stub.run_until_quiet(client.engine)
    login(http, "vi")
    page = http.get(f"/runs/{run_id}")
    html = page.text
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "hunter2-xyz" not in html
    assert "[redacted]" in html
    assert len(html) < 200_000  # a 5 MB value is cut
    link = re.search(r'href="(/runs/[^"]+/vars/big)" download', html)
    assert link, "no download link for the truncated value"
    whole = http.get(link.group(1))
    assert whole.status_code == 200 and len(whole.content) > 5_000_000 and "attachment" in \
        whole.headers["content-disposition"]


def test_a_long_ledger_pages(deployment):
    client, stub, server, http = deployment
    run_id = client.start("waiter")
    stub.run_until_quiet(client.engine)
    backend = client.backend
    records = [json.loads(json.dumps(r)) for r in client.get_ledger(run_id)]
    assert records
    login(http, "vi")
    first = http.get(f"/runs/{run_id}").text
    assert re.findall(r'data-index="(\d+)"', first)[0] == "0"
    assert backend.ledger.length(run_id) == len(records)


def test_the_rows_a_page_fetches_when_its_run_moves(deployment):
    client, stub, server, http = deployment
    run_id = client.start("approve")
    stub.run_until_quiet(client.engine)
    login(http, "vi")
    page = http.get(f"/runs/{run_id}").text
    last = re.search(r'data-last="([^"]+)"', page).group(1)
    shown = int(re.search(r'data-next-index="(\d+)"', page).group(1))
    client.respond(run_id, {"amount": 3})
    stub.run_until_quiet(client.engine)
    got = http.get(f"/runs/{run_id}/rows", params={"after": last, "from": shown, "head": "1"})
    assert got.status_code == 200, got.text[-2000:]
    data = got.json()
    assert data["status"] == "completed" and data["count"] == len(client.get_ledger(run_id)) - shown
    assert data["total"] == len(client.get_ledger(run_id))
    assert f'data-index="{shown}"' in data["html"] and "completed" in data["head"] and "<svg" in data["graph"]


def test_an_expired_session_goes_back_to_login(deployment, tmp_path):
    import time

    from workers.console import AuthFile
    from workers.console.auth import Session

    client, stub, server, http = deployment
    auth = AuthFile.load(tmp_path / "console-auth.json")
    http.cookies.set("ar_session", auth.cookie(Session("op", "operator", "x", int(time.time()) - 1)))
    response = http.get("/runs")
    assert response.status_code == 303 and response.headers["location"].startswith("/login")
    http.cookies.set("ar_session", auth.cookie(Session("op", "operator", "x", int(time.time()) + 60)))
    assert http.get("/runs").status_code == 200


def test_wake_now_needs_a_reason_and_moves_a_sleeping_run(deployment):
    from datetime import datetime, timedelta, timezone

    client, stub, server, http = deployment
    later = (datetime.now(timezone.utc) + timedelta(hours=5)).isoformat()
    run_id, page, token = open_run(deployment, "sleeper", "op", until=later)
    assert 'data-action="wake"' in page
    assert http.post(f"/runs/{run_id}/wake", json={}, headers={"X-CSRF-Token": token}).status_code == 400
    assert http.post(f"/runs/{run_id}/wake", json={"reason": "the data is in"},
                     headers={"X-CSRF-Token": token}).status_code == 200
    stub.run_until_quiet(client.engine)
    assert client.get_state(run_id).status == RunStatus.COMPLETED
    assert any(r.get("actor_id") == "op" for r in client.get_ledger(run_id))


def test_a_workflow_the_console_does_not_know_is_drawn_from_its_ledger(deployment, tmp_path):
    from workers.registry import Registry

    client, stub, server, http = deployment
    run_id = client.start("paced")
    stub.run_until_quiet(client.engine)
    stranger = Client(WorkerSettings(), backend=client.backend, reg=Registry())  # (no workflow registered)
    with ConsoleServer(stranger, write_auth_file(tmp_path)) as other, \
            httpx.Client(base_url=other.url, follow_redirects=False, timeout=10) as browser:
        login(browser, "vi")
        page = browser.get(f"/runs/{run_id}").text
    svg = re.search(r"<svg.*?</svg>", page, re.S).group(0)
    assert re.findall(r'data-node="([^"]+)"', svg) == ["s0", "s1", "s2", "s3", "s4", "s5", "s6"]
    assert svg.count('class="edge walked"') == 6


def test_the_llm_usage_of_a_run(deployment):
    from runtime import EffectOutcome, EffectType
    from workers.registry import Registry

    client, stub, server, http = deployment
    # (a registry of its own: the process-wide one keeps the LLM handler other tests rely on)
    reg = Registry()
    console_scenarios.register(reg)
    reg.register_effect_handler(EffectType.LLM_CALL, lambda run, effect: EffectOutcome.completed(
        {"content": "hi", "model": "fake-1", "usage": {"prompt_tokens": 11, "completion_tokens": 4}}))
    own = StubDispatcher()
    talker = Client(WorkerSettings(), backend=client.backend, dispatcher=own, reg=reg)
    run_id = talker.start("talker")
    own.run_until_quiet(talker.engine)
    login(http, "vi")
    page = http.get(f"/runs/{run_id}").text
    assert re.search(r'id="llm-calls">1<', page) and re.search(r'id="llm-tokens-in">11<', page)
    assert re.search(r'id="llm-tokens-out">4<', page)


def test_redis_down_is_a_banner_not_a_500(tmp_path):
    from support.redis_server import RedisServer

    with RedisServer(tmp_path / "redis").start() as srv:
        client = Client(WorkerSettings(), backend=redis_backend(srv.client()), dispatcher=StubDispatcher())
        with ConsoleServer(client, write_auth_file(tmp_path)) as server, \
                httpx.Client(base_url=server.url, follow_redirects=False, timeout=30) as http:
            login(http, "vi")
            assert http.get("/runs").status_code == 200
            srv.stop()
            down = http.get("/runs")
            assert down.status_code == 503 and 'class="banner"' in down.text and "Redis cannot be reached" in down.text
            assert "op · operator" not in down.text and "vi · viewer" in down.text  # the page itself renders
