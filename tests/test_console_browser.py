"""The run console in a real browser (issue 17's acceptance): headless Chromium driven by
Playwright for Python (``executable_path=/usr/bin/chromium``, Debian's package, which
``.ci/run`` installs; never a browser download), against a real Redis and real worker
processes. Each page is saved as a screenshot under ``docs/console/``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from runtime import RunStatus, StepRecord
from runtime.records import StepStatus

from support.console_server import PASSWORDS, ConsoleServer, write_auth_file
from support.processes import until

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[1] / "docs" / "console"
pytestmark = pytest.mark.timeout(240)

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytest.importorskip("starlette")


@pytest.fixture(scope="module")
def browser() -> Any:
    if not CHROMIUM.exists():
        pytest.skip("Chromium is absent (/usr/bin/chromium): apt-get install chromium to run the browser tests; "
                    ".ci/run installs it")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def deployment(fresh: Any, tmp_path: Path) -> Any:
    g = fresh(imports="support.console_scenarios", effect_lease_s=5, run_attrs="customer")
    g.start_worker("w1", queues="ticks,timers,maintenance,tools,subworkflows")
    client = g.client()
    with ConsoleServer(client, write_auth_file(tmp_path)) as server:
        yield g, client, server


def log_in(browser: Any, server: ConsoleServer, user: str) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.accept("a reason from the test")))
    page.dialogs = dialogs
    errors: list[str] = []  # the script's own errors fail the test that made them
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.errors = errors
    page.goto(server.url + "/runs")
    assert "/login" in page.url  # no session: the login page
    page.fill('input[name="user"]', user)
    page.fill('input[name="password"]', PASSWORDS[user])
    page.click('button[type="submit"]')
    page.wait_for_url(re.compile(r".*/runs$"))
    return page


def row_count(page: Any) -> int:
    return int(page.locator("#rows tr.rec").count())


def test_runs_live_rows_answers_cancel_verify_and_escaping(browser, deployment):
    g, client, server = deployment
    SHOTS.mkdir(parents=True, exist_ok=True)
    asks = [client.start("approve", attrs={"customer": c}) for c in ("c-1", "c-2")]
    nasty = client.start("waiter", vars={"note": "<script>alert(1)</script>",
                                         "quote": '"><img src=x onerror=alert(2)>'})
    for run_id in [*asks, nasty]:
        client.wait_for(run_id, ["waiting"], timeout=30)
    page = log_in(browser, server, "op")

    # The runs list: counts and a filter by status
    assert page.locator('[data-status="waiting"] b').inner_text() == "3"
    page.select_option('select[name="status"]', "waiting")
    page.click('form.filters button[type="submit"]')
    page.wait_for_url(re.compile(r".*status=waiting.*"))
    assert sorted(page.locator("tr[data-run]").evaluate_all("rows => rows.map(r => r.dataset.run)")) == sorted(
        [*asks, nasty])
    # and by an attribute
    page.fill('input[name="attr"]', "customer=c-2")
    page.select_option('select[name="status"]', "")
    page.click('form.filters button[type="submit"]')
    page.wait_for_url(re.compile(r".*attr=customer%3Dc-2.*"))
    assert page.locator("tr[data-run]").evaluate_all("rows => rows.map(r => r.dataset.run)") == [asks[1]]
    page.goto(server.url + "/runs")
    page.screenshot(path=str(SHOTS / "runs.png"), full_page=True)

    # A running workflow's page gains ledger rows as it moves, without a reload
    paced = client.start("paced")
    page.goto(f"{server.url}/runs/{paced}")
    page.evaluate("() => { window.__sameDocument = true; }")
    start_rows = row_count(page)
    page.wait_for_function(f"() => document.querySelectorAll('#rows tr.rec').length > {start_rows + 2}",
                           timeout=20_000)
    try:
        page.wait_for_function("() => document.getElementById('run-status').textContent === 'completed'",
                               timeout=30_000)
    except sync_api.TimeoutError:
        raise AssertionError(f"the page did not show the run completed; its errors: {page.errors}") from None
    assert page.evaluate("() => window.__sameDocument === true")  # the same document: no reload happened
    assert row_count(page) == len(client.get_ledger(paced))
    page.screenshot(path=str(SHOTS / "run.png"), full_page=True)

    # An ask_user form: an invalid answer shows the schema error, a valid one completes the run
    page.goto(f"{server.url}/runs/{asks[0]}")
    page.fill('input[name="field:amount"]', "0")
    page.click("form.answer button[type=submit]")
    page.wait_for_function("() => document.querySelector('form.answer .error').textContent.includes('at least 1')")
    assert client.get_state(asks[0]).status == RunStatus.WAITING
    page.fill('input[name="field:amount"]', "42")
    with page.expect_navigation():  # (the page reloads once the answer is in)
        page.click("form.answer button[type=submit]")
    state = client.wait_for(asks[0], ["completed"], timeout=30)
    assert state.output == {"amount": 42}

    # Cancel a waiting run: the ledger says so, with the logged-in user as actor
    page.goto(f"{server.url}/runs/{asks[1]}")
    with page.expect_navigation():
        page.click('button[data-action="cancel"]')
    assert until(lambda: client.get_state(asks[1]).status == RunStatus.CANCELLED, timeout=15)
    assert any(r.get("actor_id") == "op" for r in client.get_ledger(asks[1]))

    # Verify: OK, then a record removed in Redis is the one highlighted
    page.goto(f"{server.url}/runs/{paced}")
    page.click('button[data-action="verify"]')
    page.wait_for_function("() => document.getElementById('action-result').textContent.startsWith('Chain OK')")
    backend = client.backend
    entry_id = backend.client.xrange(backend.keys.ledger(paced))[2][0]
    backend.client.xdel(backend.keys.ledger(paced), entry_id)
    page.reload()
    page.click('button[data-action="verify"]')
    page.wait_for_selector("tr.rec.bad")
    assert page.locator("tr.rec.bad").get_attribute("data-index") == "2"

    # Values are text: no script runs, no dialog opens
    page.dialogs.clear()
    page.goto(f"{server.url}/runs/{nasty}")
    assert "<script>alert(1)</script>" in page.locator("table.vars").inner_text()
    page.wait_for_timeout(300)
    assert page.dialogs == [] and page.locator("img[src=x]").count() == 0


def test_a_viewer_and_a_post_without_the_csrf_token(browser, deployment):
    g, client, server = deployment
    run_id = client.start("waiter")
    client.wait_for(run_id, ["waiting"], timeout=30)
    page = log_in(browser, server, "vi")
    page.goto(f"{server.url}/runs/{run_id}")
    assert page.locator('button[data-action="cancel"]').count() == 0  # a viewer has no cancel button
    statuses = page.evaluate("""async (id) => {
        const csrf = document.querySelector('meta[name="csrf-token"]').content;
        const bare = await fetch(`/runs/${id}/cancel`, {method: 'POST', body: '{}'});
        const viewer = await fetch(`/runs/${id}/cancel`, {method: 'POST', body: '{}', headers: {'X-CSRF-Token': csrf}});
        return [bare.status, viewer.status];
    }""", run_id)
    assert statuses == [403, 403]
    assert client.get_state(run_id).status == RunStatus.WAITING
    # logged out: back to the login page
    page.click("form.who button")
    page.goto(f"{server.url}/runs/{run_id}")
    assert "/login" in page.url


def test_the_fleet_page_shows_a_missing_llm_worker_and_its_backlog(browser, deployment):
    g, client, server = deployment
    g.start_worker("llm", queues="llm")
    first = client.start("talker")
    assert client.wait_for(first, ["completed"], timeout=30).status == RunStatus.COMPLETED
    page = log_in(browser, server, "vi")
    page.goto(server.url + "/fleet")
    assert page.locator('tr[data-queue="llm"] td.consumers').inner_text().strip() == "1"
    g.stop("llm")
    for _ in range(3):
        client.start("talker")
    assert until(lambda: client.count(status="running") >= 3, timeout=20)
    page.reload()
    llm = page.locator('tr[data-queue="llm"]')
    assert "missing" in llm.locator("td.consumers").inner_text()
    before = int(llm.locator("td.depth").inner_text())
    assert before >= 1
    for _ in range(2):
        client.start("talker")
    time.sleep(2)
    page.reload()
    assert int(page.locator('tr[data-queue="llm"] td.depth').inner_text()) > before
    page.screenshot(path=str(SHOTS / "fleet.png"), full_page=True)


def test_a_ten_thousand_step_run_pages(browser, deployment):
    g, client, server = deployment
    run_id = client.start("waiter")
    client.wait_for(run_id, ["waiting"], timeout=30)
    backend = client.backend
    for base in range(0, 10_000, 500):
        backend.append([StepRecord(run_id=run_id, step_id=f"s{base + i}", node_id=f"n{(base + i) % 7}",
                                   status=StepStatus.COMPLETED, result={"i": base + i}) for i in range(500)],
                       run_id=run_id)
    total = backend.ledger.length(run_id)
    assert total >= 10_000
    page = log_in(browser, server, "vi")
    t0 = time.monotonic()
    page.goto(f"{server.url}/runs/{run_id}")
    first_render_s = time.monotonic() - t0
    assert row_count(page) == 100 and f"({total} records" in page.inner_text("h2:has-text('Ledger')")
    page.click("a.next")
    page.wait_for_url(re.compile(r".*from=100.*"))
    assert page.locator("#rows tr.rec").first.get_attribute("data-index") == "100"
    print(f"\n10,000-step run: first render {first_render_s * 1000:.0f} ms")


def test_retry_a_failed_run_after_its_fix(browser, deployment, tmp_path):
    g, client, server = deployment
    fix = tmp_path / "fixed"
    run_id = client.start("flaky", vars={"fix_file": str(fix)})
    assert client.wait_for(run_id, ["failed"], timeout=60).status == RunStatus.FAILED
    page = log_in(browser, server, "op")
    page.goto(f"{server.url}/runs/{run_id}")
    assert "the upstream answered 500" in page.locator("section.failure").inner_text()
    fix.write_text("deployed")
    with page.expect_navigation():  # (the button asks for a reason: the test's dialog handler gives one)
        page.click('button[data-action="retry"]')
    assert client.wait_for(run_id, ["completed"], timeout=60).status == RunStatus.COMPLETED
    assert any(m == "Why retry?" for m in page.dialogs)
    assert any(r.get("actor_id") == "op" for r in client.get_ledger(run_id))
