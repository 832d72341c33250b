"""Run attributes (issue 17, part 2): a producer sets indexed attributes on a run at its start,
and finds the runs by them without a scan.

Through the producer API with the stub dispatcher, on a real redis-server and on fakeredis:
listing by attribute (newest created first, with the other filters), the refusals (typed, and
nothing written), the index entries a listing drops, and child runs that do not inherit. Then
the CLI a user types, in a subprocess against the session's redis-server: ``start --attr``,
``runs list --attr``, ``runs count --attr``, ``status`` and a malformed ``--attr``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runtime import Effect, EffectType, RunStatus, StepPlan, WorkflowSpec
from runtime.errors import RunAlreadyExists
from stores.redis import RedisBackend
from stores.redis.attrs import ORPHAN_GRACE_MS
from workers.attrs import InvalidRunAttribute
from workers.client import Client
from workers.registry import register_workflow
from workers.settings import WorkerSettings
from workers.testing import StubDispatcher

import support.celery_scenarios  # noqa: F401  (registers ask, chain and child)
from support.backends import fresh_prefix
from support.cli import ok, refused

pytestmark = pytest.mark.timeout(60)

ALLOWED = ("customer", "region", "tier", "vip")


def _parent_passing_its_vars() -> WorkflowSpec:
    """A parent that gives its child every var it has, ``_attrs`` included."""

    def start(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="start", effect=Effect(type=EffectType.START_SUBWORKFLOW, payload={
            "workflow_id": "child", "vars": dict(run.vars)}, result_key="child"), next_node="done")

    def done(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="done", complete_output={"ok": True})

    return register_workflow(WorkflowSpec(workflow_id="attrs_parent", entry_node="start",
                                          nodes={"start": start, "done": done}), replace=True)


_parent_passing_its_vars()


@pytest.fixture
def client(store: RedisBackend) -> tuple[Client, StubDispatcher]:
    stub = StubDispatcher()
    return Client(WorkerSettings(run_attrs=ALLOWED), backend=store, dispatcher=stub), stub


def ids(runs: list[Any]) -> list[str]:
    return [r.run_id for r in runs]


def attr_keys(store: RedisBackend) -> list[bytes]:
    """Every attribute index of the test's prefix (a scan, which only a test does)."""
    return sorted(store.client.scan_iter(match=f"{store.keys.prefix}:idx:attr:*"))


def test_runs_started_with_an_attribute_are_listed_by_it_newest_first(client):
    c, stub = client
    # Given runs of two customers (one also in another region) and a run with no attributes
    mine = [c.start("chain", attrs={"customer": "c-42", "region": "eu" if i != 1 else "us"}) for i in range(4)]
    theirs = [c.start("chain", attrs={"customer": "c-7", "region": "eu" if i else "us"}) for i in range(2)]
    c.start("chain")
    stub.run_until_quiet(c.engine)
    # I expect exactly the customer's runs, newest created first, whatever their updates since
    assert ids(c.list_runs(attrs={"customer": "c-42"})) == mine[::-1]
    assert ids(c.list_runs(attrs={"customer": "c-7"})) == theirs[::-1]
    assert ids(c.list_runs(attrs={"customer": "c-42"}, limit=2)) == mine[::-1][:2]
    assert ids(c.list_runs(attrs={"customer": "c-42", "region": "eu"})) == [mine[3], mine[2], mine[0]]
    assert ids(c.list_runs(attrs={"region": "eu", "customer": "c-42"})) == [mine[3], mine[2], mine[0]]
    assert ids(c.list_runs(attrs={"customer": "c-7", "region": "eu"})) == [theirs[1]]
    assert c.list_runs(attrs={"customer": "c-1"}) == []
    assert c.count(attrs={"customer": "c-42"}) == 4 and c.count(attrs={"customer": "c-42", "region": "us"}) == 1
    # and each run keeps its attributes, as text, in vars["_attrs"]
    assert c.get_state(mine[1]).vars["_attrs"] == {"customer": "c-42", "region": "us"}
    assert "_attrs" not in c.get_state(c.list_runs(limit=1)[0].run_id).vars
    # one index per (name, value), scored by the creation time in epoch ms
    store = c.backend
    score = store.client.zscore(store.keys.by_attr("customer", "c-42"), mine[0])
    created = c.get_state(mine[0]).created_at
    from runtime._clock import parse_iso

    assert score == pytest.approx(parse_iso(created).timestamp() * 1000, abs=0.002)


def test_ints_and_bools_are_kept_as_text_and_found_either_way(client):
    c, stub = client
    rid = c.start("chain", attrs={"tier": 3, "vip": True, "customer": "c-42"})
    other = c.start("chain", attrs={"tier": 30, "vip": False})
    assert c.get_state(rid).vars["_attrs"] == {"tier": "3", "vip": "true", "customer": "c-42"}
    for query in ({"tier": 3}, {"tier": "3"}, {"vip": True}, {"vip": "true"}, {"tier": 3, "vip": True}):
        assert ids(c.list_runs(attrs=query)) == [rid], query
    assert ids(c.list_runs(attrs={"vip": False})) == [other]


def test_the_attribute_filter_combines_with_status_workflow_and_wait_reason(client):
    c, stub = client
    asks = [c.start("ask", attrs={"customer": "c-42"}) for _ in range(2)]
    chains = [c.start("chain", attrs={"customer": "c-42"}) for _ in range(2)]
    elsewhere = c.start("ask", attrs={"customer": "c-7"})
    stub.run_until_quiet(c.engine)
    by = {"customer": "c-42"}
    assert ids(c.list_runs(attrs=by, status="waiting")) == asks[::-1]
    assert ids(c.list_runs(attrs=by, status=RunStatus.COMPLETED)) == chains[::-1]
    assert ids(c.list_runs(attrs=by, workflow_id="chain")) == chains[::-1]
    assert ids(c.list_runs(attrs=by, wait_reason="user")) == asks[::-1]
    assert c.list_runs(attrs=by, status="failed") == []
    assert c.count(attrs=by, status="waiting") == 2
    assert ids(c.list_runs(status="waiting")) == [elsewhere, *asks[::-1]]  # without attrs, as before
    # a run that moves on is listed by its status now
    c.respond(asks[0], "y")
    stub.run_until_quiet(c.engine)
    assert ids(c.list_runs(attrs=by, status="waiting")) == [asks[1]]
    assert ids(c.list_runs(attrs=by, status="completed")) == [chains[1], chains[0], asks[0]]


LONG = "x" * 129

REFUSED = [
    ({"colour": "red"}, "attrs.colour: not an allowed attribute (allowed: customer, region, tier, vip; set "
                        "ABSTRACTRUNTIME_RUN_ATTRS)"),
    ({"customer": LONG}, "attrs.customer: value longer than 128 characters"),
    ({"customer": 10**130}, "attrs.customer: value longer than 128 characters"),
    ({"customer": 4.2}, "attrs.customer: value must be a str, int or bool, got float"),
    ({"customer": None}, "attrs.customer: value must be a str, int or bool, got NoneType"),
    ({"customer": ["c-42"]}, "attrs.customer: value must be a str, int or bool, got list"),
    ({"customer": "c-42\n"}, "attrs.customer: value holds a control character ('\\n')"),
    ({"customer": "c\x00"}, "attrs.customer: value holds a control character ('\\x00')"),
    ({"customer": ""}, "attrs.customer: empty value"),
    ({"Customer": "c-42"}, "attrs.Customer: not a valid attribute name (a lower-case letter, then up to 31 "
                           "lower-case letters, digits or _)"),
    ({"region": "eu", "customer": "c-42", "tier": 2.5}, "attrs.tier: value must be a str, int or bool, got float"),
    ({f"a{i}": "x" for i in range(17)}, "attrs: 17 attributes, at most 16"),
    (["customer", "c-42"], "attrs: must be a mapping of name to value, got list"),
]


@pytest.mark.parametrize(("attrs", "message"), REFUSED, ids=[m.split(":")[0] + f"-{i}" for i, (_, m)
                                                            in enumerate(REFUSED)])
def test_a_refused_attribute_raises_the_typed_error_and_stores_nothing(client, attrs, message):
    c, stub = client
    # Given a deployment with one run started with an attribute
    c.start("chain", attrs={"customer": "c-42"})
    store = c.backend
    before = (c.count(), sorted(store.client.scan_iter(match=f"{store.keys.prefix}:*")), attr_keys(store))
    # If a start's attributes break a rule, I expect the typed error naming it, and nothing written
    with pytest.raises(InvalidRunAttribute) as info:
        c.start("chain", attrs=attrs, run_id="refused-run")
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)
    assert info.value.problem and message.endswith(info.value.problem)
    assert c.backend.runs.load("refused-run") is None
    assert (c.count(), sorted(store.client.scan_iter(match=f"{store.keys.prefix}:*")), attr_keys(store)) == before
    assert len(stub.pending) == 1  # only the first run's tick was sent


def test_attributes_are_refused_where_none_are_allowed_and_not_set_through_vars(store):
    c = Client(WorkerSettings(), backend=store, dispatcher=StubDispatcher())
    with pytest.raises(InvalidRunAttribute, match=r"^attrs.customer: not an allowed attribute \(allowed: none; "
                                                  r"set ABSTRACTRUNTIME_RUN_ATTRS\)$"):
        c.start("chain", attrs={"customer": "c-42"})
    with pytest.raises(InvalidRunAttribute, match=r"^attrs: set attributes with attrs=, not vars\['_attrs'\]$"):
        c.start("chain", vars={"_attrs": {"customer": "c-42"}})
    assert c.count() == 0 and attr_keys(store) == []
    rid = c.start("chain", attrs={})  # none is fine
    assert "_attrs" not in c.get_state(rid).vars
    # a query is checked the same way, but reading needs no allow-list
    assert c.list_runs(attrs={"customer": "c-42"}) == []
    with pytest.raises(InvalidRunAttribute, match=r"^attrs.customer: value longer than 128 characters$"):
        c.list_runs(attrs={"customer": LONG})
    with pytest.raises(InvalidRunAttribute, match=r"^attrs.Customer: not a valid attribute name"):
        c.count(attrs={"Customer": "x"})


def test_the_allow_list_is_read_from_the_environment():
    assert WorkerSettings().run_attrs == ()
    env = {"ABSTRACTRUNTIME_RUN_ATTRS": " customer, region ,,tier"}
    assert WorkerSettings.from_env(env).run_attrs == ("customer", "region", "tier")
    assert WorkerSettings(run_attrs="customer,vip").run_attrs == ("customer", "vip")  # type: ignore[arg-type]
    for bad in ("Customer", "customer,1st", "c" * 33, "custo-mer"):
        with pytest.raises(ValueError, match=r"^ABSTRACTRUNTIME_RUN_ATTRS: WorkerSettings.run_attrs must be "
                                             r"attribute names"):
            WorkerSettings.from_env({"ABSTRACTRUNTIME_RUN_ATTRS": bad})


def test_a_listing_drops_entries_that_can_never_be_right(client):
    c, stub = client
    store = c.backend
    key = store.keys.by_attr("customer", "c-42")
    kept = c.start("chain", attrs={"customer": "c-42"}, run_id="kept")
    # A create refused because its run id is taken by a run with other attributes leaves an entry
    # (added before the commit), which must not list the run under a value it does not have
    c.start("chain", attrs={"customer": "c-7"}, run_id="taken")
    with pytest.raises(RunAlreadyExists):
        c.start("chain", attrs={"customer": "c-42"}, run_id="taken")
    assert store.client.zscore(key, "taken") is not None
    # A create refused because an equal create won keeps the winner's entry, and its score
    score = store.client.zscore(key, "kept")
    with pytest.raises(RunAlreadyExists):
        c.start("chain", attrs={"customer": "c-42"}, run_id="kept")
    assert store.client.zscore(key, "kept") == score
    # Entries whose run does not exist: one old (a create that died, a run deleted by hand), one
    # young (a create still on its way: it must not lose its entry)
    now = store.time_ms()
    store.client.zadd(key, {"died": now - ORPHAN_GRACE_MS - 1000, "on-its-way": now})
    assert ids(c.list_runs(attrs={"customer": "c-42"})) == [kept]
    left = {m.decode() for m in store.client.zrange(key, 0, -1)}
    assert left == {"kept", "on-its-way"}
    assert ids(c.list_runs(attrs={"customer": "c-7"})) == ["taken"]
    assert c.count(attrs={"customer": "c-42"}) == 1


def test_a_listing_pages_through_an_index_longer_than_a_page(client):
    c, stub = client
    rids = [c.start("chain", attrs={"customer": "big"}) for _ in range(230)]
    for rid in rids[:25]:
        c.cancel(rid)
    found = c.list_runs(attrs={"customer": "big"}, status="running", limit=1000)
    assert ids(found) == rids[25:][::-1]
    assert c.count(attrs={"customer": "big"}, status="cancelled") == 25


def test_child_runs_do_not_inherit_attributes(client):
    c, stub = client
    parent = c.start("attrs_parent", attrs={"customer": "c-42"})
    stub.run_until_quiet(c.engine)
    assert c.get_state(parent).status == RunStatus.COMPLETED
    children = c.backend.children_of(parent)
    assert len(children) == 1
    child = c.get_state(children[0])
    assert "_limits" in child.vars and "_attrs" not in child.vars  # it got its parent's vars but _attrs
    assert ids(c.list_runs(attrs={"customer": "c-42"})) == [parent]


# -- the CLI ------------------------------------------------------------------------------------------

CLI = str(Path(sys.executable).with_name("abstractruntime"))
TESTS_DIR = Path(__file__).resolve().parent


class Deployment:
    """A prefix of the session's Redis, a producer on it, and the CLI pointed at it."""

    def __init__(self, server: Any) -> None:
        self.prefix = fresh_prefix("at")
        self.url = server.url
        self.backend = RedisBackend(server.client(), prefix=self.prefix)
        self.stub = StubDispatcher()
        self.client = Client(WorkerSettings(run_attrs=ALLOWED), backend=self.backend, dispatcher=self.stub)

    def run(self, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_") and k != "PYTHONPATH"}
        env.update(ABSTRACTRUNTIME_REDIS_URL=self.url, ABSTRACTRUNTIME_REDIS_PREFIX=self.prefix, **extra_env)
        return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def dep(redis_server: Any) -> Deployment:
    return Deployment(redis_server)


def test_cli_runs_list_and_count_by_attribute(dep):
    c = dep.client
    asks = [c.start("ask", attrs={"customer": "c-42", "region": "eu"}) for _ in range(2)]
    done = c.start("chain", attrs={"customer": "c-42"})
    other = c.start("ask", attrs={"customer": "c-7"})
    dep.stub.run_until_quiet(c.engine)

    listed = ok(dep.run("--json", "runs", "list", "--attr", "customer=c-42"))
    assert [r["run_id"] for r in listed] == [done, *asks[::-1]]
    assert listed[0]["attrs"] == {"customer": "c-42"} and listed[1]["attrs"] == {"customer": "c-42", "region": "eu"}
    assert [r["run_id"] for r in ok(dep.run("--json", "runs", "list", "--attr", "customer=c-42",
                                            "--status", "waiting"))] == asks[::-1]
    assert [r["run_id"] for r in ok(dep.run("--json", "runs", "list", "--attr", "customer=c-42",
                                            "--attr", "region=eu", "--limit", "1"))] == [asks[1]]
    assert ok(dep.run("--json", "runs", "list", "--attr", "customer=nobody")) == []
    text = dep.run("runs", "list", "--attr", "customer=c-7")
    assert text.returncode == 0, text.stderr
    assert len(text.stdout.splitlines()) == 1 and other in text.stdout
    assert "customer=c-7" in text.stdout and asks[0] not in text.stdout
    assert ok(dep.run("--json", "runs", "count", "--attr", "customer=c-42", "--status", "waiting")) == {
        "count": 2, "status": "waiting", "workflow_id": None, "attrs": {"customer": "c-42"}}

    shown = ok(dep.run("--json", "status", asks[0]))
    assert shown["attrs"] == {"customer": "c-42", "region": "eu"}
    human = dep.run("status", asks[0])
    assert human.returncode == 0 and "attrs     customer=c-42, region=eu" in human.stdout


def test_cli_refuses_a_malformed_attr_flag_with_exit_2(dep):
    keys_before = sorted(dep.backend.client.scan_iter(match=f"{dep.prefix}:*"))
    refused(dep.run("runs", "list", "--attr", "customer"), 2, "--attr 'customer'", "NAME=VALUE")
    refused(dep.run("runs", "list", "--attr", "=c-42"), 2, "--attr '=c-42'", "NAME=VALUE")
    refused(dep.run("runs", "count", "--attr", "customer"), 2, "--attr 'customer'")
    refused(dep.run("runs", "list", "--attr", "a=1", "--attr", "a=2"), 2, "--attr a is given twice")
    refused(dep.run("runs", "list", "--attr", f"customer={LONG}"), 2, "attrs.customer: value longer than 128")
    workflows = {"ABSTRACTRUNTIME_IMPORTS": "support.celery_scenarios", "PYTHONPATH": str(TESTS_DIR),
                 "ABSTRACTRUNTIME_RUN_ATTRS": "customer,region"}
    refused(dep.run("start", "chain", "--attr", "customer", **workflows), 2, "--attr 'customer'")
    refused(dep.run("start", "chain", "--attr", "colour=red", "--run-id", "no", **workflows), 2,
            "attrs.colour: not an allowed attribute (allowed: customer, region; set ABSTRACTRUNTIME_RUN_ATTRS)")
    refused(dep.run("start", "chain", "--attr", "customer=c-42", **{**workflows, "ABSTRACTRUNTIME_RUN_ATTRS": ""}),
            2, "attrs.customer: not an allowed attribute (allowed: none")
    assert sorted(dep.backend.client.scan_iter(match=f"{dep.prefix}:*")) == keys_before


def test_cli_start_sets_attributes(dep):
    workflows = {"ABSTRACTRUNTIME_IMPORTS": "support.celery_scenarios", "PYTHONPATH": str(TESTS_DIR),
                 "ABSTRACTRUNTIME_RUN_ATTRS": "customer,tier"}
    started = ok(dep.run("--json", "start", "chain", "--attr", "customer=c-42", "--attr", "tier=3", **workflows))
    rid = started["run_id"]
    assert dep.backend.runs.load(rid).vars["_attrs"] == {"customer": "c-42", "tier": "3"}
    # the CLI's text is the value a program's int finds
    assert ids(dep.client.list_runs(attrs={"tier": 3})) == [rid]
    assert [r["run_id"] for r in ok(dep.run("--json", "runs", "list", "--attr", "customer=c-42"))] == [rid]
