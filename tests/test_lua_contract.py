"""The Python side of each Lua script matches the comment that opens the script.

Each script lists its KEYS and ARGV, one per line (``-- KEYS[3]  results  ...``), and names
its reply codes (``local CONFLICT, OK = 0, 1``). These tests read those comments and check
that what ``RedisBackend`` sends has exactly those items in that order, and that every code
Python reads is named the same on both sides.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgpack
import pytest

from runtime import RunState, RunStatus, StepRecord, WaitReason, WaitState
from runtime._clock import parse_iso
from stores.redis import RedisBackend
from stores.redis.backend import AppendArgs, AppendKeys, CommitArgs, CommitKeys
from stores.redis.dispatch import Dispatch
from stores.redis.scripts import SOURCES, Reply

from support.backends import redis_backend

LUA = Path(__file__).resolve().parent.parent / "stores" / "redis" / "lua"
_ITEM = re.compile(r"^-- (KEYS|ARGV)\[(\d+)(?:\.\.(\d*))?\]\s+(\w+)")


def header(script: str) -> dict[str, list[tuple[int, int | None, str]]]:
    """``{"KEYS": [(first, last, name), ...], "ARGV": [...]}`` from the script's opening comment
    (``last`` is None for an open range such as ``ARGV[20..]``)."""
    items: dict[str, list[tuple[int, int | None, str]]] = {"KEYS": [], "ARGV": []}
    for line in (LUA / f"{script}.lua").read_text(encoding="utf-8").splitlines():
        if not line.startswith("--"):
            break  # the comment ends where the code starts
        m = _ITEM.match(line)
        if m:
            first = int(m[2])
            last = first if m[3] is None else (int(m[3]) if m[3] else None)
            items[m[1]].append((first, last, m[4]))
    for kind, entries in items.items():  # numbered 1, 2, ... with no gap or overlap
        expected = 1
        for first, last, name in entries:
            assert first == expected, f"{script}.lua {kind}[{first}] {name}: expected {kind}[{expected}]"
            expected = (last if last is not None else first) + 1
    return items


def names(entries: list[tuple[int, int | None, str]]) -> list[str]:
    return [name for _first, _last, name in entries]


def count(entries: list[tuple[int, int | None, str]]) -> int:
    first, last, _name = entries[-1]
    return last if last is not None else first


class Recorder:
    """Stands in for a registered script: keeps what it was sent, then runs the real one."""

    def __init__(self, script: Any) -> None:
        self.script, self.calls = script, []

    def __call__(self, keys: list[str], args: list[Any]) -> Any:
        self.calls.append((list(keys), list(args)))
        return self.script(keys=keys, args=args)


@pytest.fixture
def backend(redis_server) -> RedisBackend:
    return redis_backend(redis_server.client())


def a_run_with_records(run_id: str) -> tuple[RunState, list[StepRecord]]:
    run = RunState.new(workflow_id="w", entry_node="a", run_id=run_id, vars={})
    done = StepRecord.start(run=run, node_id="a", effect=None, idempotency_key="k1").finish_success({"x": 1})
    return run, [StepRecord.start(run=run, node_id="a", effect=None), done]


def updated_us(run: RunState) -> str:
    return str(int(parse_iso(run.updated_at).timestamp() * 1_000_000))


def test_commit_sends_the_keys_and_argv_its_header_lists(backend):
    items = header("commit")
    assert names(items["KEYS"]) == list(CommitKeys._fields)
    assert names(items["ARGV"]) == [*CommitArgs._fields, "records"]
    assert items["ARGV"][-1][1] is None  # the records run to the end

    recorder = backend._commit_script = Recorder(backend._commit_script)
    parent = RunState.new(workflow_id="w", entry_node="a", run_id="p1", vars={})
    backend.commit(parent, [], create=True)
    run, records = a_run_with_records("r1")
    run.parent_run_id = "p1"
    run.status, run.waiting = RunStatus.WAITING, WaitState(reason=WaitReason.EVENT, wait_key="old-key")
    backend.commit(run, [], create=True)  # so that every "old" item differs from its "new" one
    run.status, run.waiting = RunStatus.RUNNING, None
    backend.commit(run, records, dispatch=Dispatch.tick(), lease_ms=1000)
    keys, argv = recorder.calls[-1]
    assert len(keys) == count(items["KEYS"]) == 15
    fixed = len(CommitArgs._fields)
    # n, the two records, m, one (idempotency key, result) pair
    assert len(argv) == fixed + 1 + 2 + 1 + 2 and argv[fixed] == 2 and argv[fixed + 3] == 1
    # Each item is what its name in the header says (the builder passes them by position).
    k = backend.keys
    assert dict(zip(CommitKeys._fields, keys)) == {
        "run": k.run("r1"), "ledger": k.ledger("r1"), "results": k.results("r1"), "updated": k.by_updated(),
        "workflow": k.by_workflow("w"), "status_old": k.by_status("waiting"), "status_new": k.by_status("running"),
        "reason_old": k.by_wait_reason("event"), "reason_new": k.by_wait_reason("-"),
        "wait_old": k.waiting_on("old-key"), "wait_new": k.waiting_on(""), "timers": k.timers(),
        "children": k.children("p1"), "events": k.events(),
        "leases": k.leases()}
    sent = dict(zip(CommitArgs._fields, argv))
    token, state = sent.pop("token"), sent.pop("state")
    assert isinstance(token, str) and len(token) > 8 and msgpack.unpackb(state)["run_id"] == "r1"
    assert sent == {
        "mode": "all", "expected_version": "1", "expected_head": "", "run_id": "r1", "updated": updated_us(run),
        "status_new": "running", "status_old": "waiting", "reason_new": "", "reason_old": "event", "wait_new": "",
        "wait_old": "old-key", "until_ms": "", "has_parent": "1", "events_maxlen": backend.events_maxlen,
        "new_head": records[-1].record_hash, "dispatch": msgpack.packb({"k": "tick"}), "lease_ms": "1000",
        "fence": ""}


def test_append_sends_the_keys_and_argv_its_header_lists(backend):
    items = header("append")
    assert names(items["KEYS"]) == list(AppendKeys._fields)
    assert names(items["ARGV"]) == [*AppendArgs._fields, "records"]

    recorder = backend._append_script = Recorder(backend._append_script)
    run, records = a_run_with_records("r2")
    backend.append(records, run_id="r2", lookup_key="k0")
    keys, argv = recorder.calls[-1]
    k = backend.keys
    assert dict(zip(AppendKeys._fields, keys)) == {"run": k.run("r2"), "ledger": k.ledger("r2"),
                                                   "results": k.results("r2")}
    sent = dict(zip(AppendArgs._fields, argv))
    assert isinstance(sent.pop("token"), str)
    assert sent == {"expected_head": "", "new_head": records[-1].record_hash, "lookup_key": "k0", "dispatch": "",
                    "fence": ""}
    assert len(argv) == len(AppendArgs._fields) + 1 + 2 + 1 + 2 and argv[len(AppendArgs._fields)] == 2


def test_the_cluster_index_call_sends_what_index_lua_lists(redis_server):
    items = header("index")
    backend = redis_backend(redis_server.client(), cluster=True)
    commits = backend._commit_script = Recorder(backend._commit_script)
    moves = backend._index_script = Recorder(backend._index_script)
    run, records = a_run_with_records("r3")
    backend.commit(run, records, create=True)
    assert len(commits.calls[-1][0]) == 3  # "run" mode: the run's own slot only
    keys, argv = moves.calls[-1]
    assert (len(keys), len(argv)) == (count(items["KEYS"]), count(items["ARGV"])) == (18, 11)


def declared_codes(script: str) -> dict[str, int]:
    """The reply codes a script names: ``local CONFLICT, OK = 0, 1``."""
    text = (LUA / f"{script}.lua").read_text(encoding="utf-8")
    m = re.search(r"^local ([A-Z_, ]+) = ([\d, ]+)", text, re.M)
    assert m, f"{script}.lua names no reply codes"
    return dict(zip((n.strip() for n in m[1].split(",")), (int(v) for v in m[2].split(","))))


@pytest.mark.parametrize("script", ["commit", "append", "fence", "admit", "admit_release", "admit_renew",
                                    "admit_reconcile"])
def test_every_reply_code_is_named_the_same_in_lua_and_python(script):
    codes = declared_codes(script)
    assert codes == {name: Reply[name].value for name in codes}
    text = (LUA / f"{script}.lua").read_text(encoding="utf-8")
    returned = re.findall(r"return \{(\w+)", text)
    assert returned and set(returned) <= set(codes), "a reply code is returned as a bare number"


def test_failure_script_replies_with_named_codes():
    codes = declared_codes("failure")
    assert codes == {name: Reply[name].value for name in codes} == {"OK": 1, "MISSING": 5}
    text = (LUA / "failure.lua").read_text(encoding="utf-8")
    assert set(re.findall(r"^\s*return (\w+)", text, re.M)) == {"OK", "MISSING"}


def test_a_failure_is_kept_only_for_a_run_that_exists(redis_server):
    backend = redis_backend(redis_server.client())
    assert backend.set_last_failure("nobody", {"type": "X", "traceback": "t"}) is False
    assert not backend.client.exists(backend.keys.run("nobody"))  # no hash without a state


def test_python_reads_reply_codes_only_by_name():
    used = {name for script in ("commit", "append", "failure", "fence", "admit", "admit_release", "admit_renew",
                                "admit_reconcile") for name in declared_codes(script)}
    assert used == {r.name for r in Reply}
    for module in ("backend.py", "admission.py"):
        text = (LUA.parent / module).read_text(encoding="utf-8")
        assert not re.search(r"code\s*[!=]=\s*\d", text)
        assert not re.search(r"reply\[0\]\)*\s*[!=]=\s*\d", text)


def test_the_admission_scripts_get_the_keys_and_argv_their_headers_list(redis_server):
    from stores.redis.admission import Admission
    from stores.redis.flowkeys import FlowKeys, rule_id
    from workers.flow.rules import LimitRule

    from support.backends import fresh_prefix

    keys = FlowKeys(fresh_prefix())
    adm = Admission(redis_server.client(), keys)
    recorders = {name: Recorder(getattr(adm, f"_{name}")) for name in ("admit", "release", "renew", "reconcile")}
    for name, recorder in recorders.items():
        setattr(adm, f"_{name}", recorder)
    rules = [(rule_id("global", "*", "limit"), LimitRule(key="global", concurrency=3, tokens=100)),
             (rule_id("tenant:a", "*", "limit"), LimitRule(key="tenant:*", rate=5, burst=2))]
    assert adm.acquire("h", rules, tokens=10, lease_ms=1000).admitted
    assert adm.renew("h", 1000) and adm.reconcile("h", None, 5) == 1 and adm.release("h") == 1

    def check(script: str, keys_sent: list[str], argv: list) -> dict[str, str]:
        items = header(script)
        assert items["KEYS"][-1][1] is None and items["ARGV"][-1][1] is None  # open ranges
        return dict(zip(names(items["ARGV"]), argv))

    keys_sent, argv = recorders["release"].calls[-1]
    assert names(header("admit_release")["KEYS"]) == ["holders", "peek", "holder_keys"]
    assert keys_sent == [keys.holders(), keys.unqueued(), keys.held("h"), keys.slots(rules[0][0]),
                         keys.budget(rules[0][0])]
    assert argv == ["release", "", "h", "1", rules[0][0]]
    keys_sent, argv = recorders["admit"].calls[-1]
    assert names(header("admit")["KEYS"]) == ["holders", "held", "behind", "retaken", "rule_keys"]
    # Per rule, only the keys of the limits it has: concurrency + tokens (slots, budget), then rate (rate).
    assert keys_sent == [keys.holders(), keys.held("h"), keys.unqueued(), keys.retaken(), keys.slots(rules[0][0]),
                         keys.budget(rules[0][0]), keys.rate(rules[1][0])]
    sent = check("admit", keys_sent, argv)
    assert sent == {"holder": "h", "lease_ms": "1000", "tokens": "10", "cost": "0", "now_ms": "",
                    "rules": rules[0][0]}
    # Per rule: id, mask (1 concurrency + 2 rate + 4 tokens + 8 cost + 16 fail), then only its numbers.
    assert argv[5:] == [rules[0][0], "5", "3", "100", "60000",
                        rules[1][0], "2", "200000", "400000"]
    keys_sent, argv = recorders["renew"].calls[-1]
    assert keys_sent == [keys.holders(), keys.slots(rules[0][0])] and argv == ["h", "1000", ""]
    assert names(header("admit_renew")["ARGV"]) == ["holder", "lease_ms", "now_ms"]
    keys_sent, argv = recorders["reconcile"].calls[-1]
    assert keys_sent == [keys.budget(rules[0][0])] and argv == ["h", "5", "0", ""]
    assert names(header("admit_reconcile")["ARGV"]) == ["holder", "tokens", "cost", "now_ms"]


def test_the_index_moves_are_written_once_and_sent_with_both_scripts():
    moves = (LUA / "moves.lua").read_text(encoding="utf-8")
    for script in ("commit", "index"):
        own = (LUA / f"{script}.lua").read_text(encoding="utf-8")
        assert "move_entries(" in own and "local function move_entries" not in own
        assert SOURCES[script].startswith(moves)
