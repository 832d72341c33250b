"""One contract for every run and ledger store, plus what the JSON files must survive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runtime import (
    CorruptRecordError,
    Effect,
    EffectType,
    PayloadNotSerializable,
    RunAlreadyExists,
    RunState,
    RunStatus,
    StepRecord,
    WaitReason,
    WaitState,
)
from stores import JsonFileRunStore, JsonlLedgerStore

REPO = Path(__file__).resolve().parents[1]


def make_run(run_id: str, *, status=RunStatus.RUNNING, workflow_id="w", updated_at="2026-01-01T00:00:00+00:00",
             waiting: WaitState | None = None, parent: str | None = None) -> RunState:
    run = RunState.new(workflow_id=workflow_id, entry_node="a", run_id=run_id, parent_run_id=parent)
    run.status, run.waiting, run.updated_at = status, waiting, updated_at
    return run


def until(at: str) -> WaitState:
    return WaitState(reason=WaitReason.UNTIL, until=at)


def test_save_load_returns_fresh_copies(backend):
    store = backend.run_store
    run = make_run("r1")
    run.vars = {"n": [1, 2]}
    store.save(run)
    run.vars["n"].append(3)  # changing the saved object afterwards changes nothing stored
    loaded = store.load("r1")
    assert loaded.vars == {"n": [1, 2]} and loaded is not run
    loaded.vars["x"] = 1
    assert "x" not in store.load("r1").vars
    assert store.load("missing") is None


def test_create_is_exclusive(backend):
    store = backend.run_store
    store.create(make_run("r1", workflow_id="first"))
    with pytest.raises(RunAlreadyExists):
        store.create(make_run("r1", workflow_id="second"))
    assert store.load("r1").workflow_id == "first"


def test_save_refuses_non_json_and_keeps_the_old_state(backend):
    store = backend.run_store
    store.save(make_run("r1"))
    bad = make_run("r1")
    bad.vars = {"when": object()}
    with pytest.raises(PayloadNotSerializable, match=r"run\['vars'\]\['when'\]"):
        store.save(bad)
    assert store.load("r1").vars == {}


def test_list_runs_filters_and_orders_newest_first(backend):
    store = backend.run_store
    store.save(make_run("old", updated_at="2026-01-01T00:00:00+00:00"))
    store.save(make_run("new", updated_at="2026-01-03T00:00:00+00:00"))
    # Same instant-order check across offsets: 2026-01-02T05:00+05:00 is 00:00 UTC on the 2nd.
    store.save(make_run("mid", updated_at="2026-01-02T05:00:00+05:00", workflow_id="other"))
    store.save(make_run("wait", status=RunStatus.WAITING, waiting=WaitState(reason=WaitReason.USER, wait_key="k"),
                        updated_at="2025-12-31T00:00:00+00:00"))
    assert [r.run_id for r in store.list_runs()] == ["new", "mid", "old", "wait"]
    assert [r.run_id for r in store.list_runs(limit=2)] == ["new", "mid"]
    assert [r.run_id for r in store.list_runs(status=RunStatus.RUNNING, workflow_id="w")] == ["new", "old"]
    assert [r.run_id for r in store.list_runs(wait_reason=WaitReason.USER)] == ["wait"]
    assert store.list_runs(wait_reason=WaitReason.EVENT) == []


def test_due_timers_are_parsed_and_oldest_first(backend):
    store = backend.run_store
    w = RunStatus.WAITING
    store.save(make_run("later", status=w, waiting=until("2026-01-01T12:00:00Z")))
    store.save(make_run("sooner", status=w, waiting=until("2026-01-01T06:00:00-05:00")))  # 11:00 UTC
    store.save(make_run("naive", status=w, waiting=until("2026-01-01T10:00:00")))  # naive = UTC
    store.save(make_run("future", status=w, waiting=until("2026-01-02T00:00:00Z")))
    store.save(make_run("done", status=RunStatus.COMPLETED, waiting=until("2020-01-01T00:00:00Z")))
    due = store.list_due_wait_until(now_iso="2026-01-01T12:00:00+00:00")
    assert [r.run_id for r in due] == ["naive", "sooner", "later"]
    assert [r.run_id for r in store.list_due_wait_until(now_iso="2026-01-01T12:00:00Z", limit=1)] == ["naive"]


def test_children_by_parent_and_status(backend):
    store = backend.run_store
    store.save(make_run("p"))
    store.save(make_run("c1", parent="p"))
    store.save(make_run("c2", parent="p", status=RunStatus.COMPLETED))
    store.save(make_run("other", parent="q"))
    assert {r.run_id for r in store.list_children(parent_run_id="p")} == {"c1", "c2"}
    assert [r.run_id for r in store.list_children(parent_run_id="p", status=RunStatus.COMPLETED)] == ["c2"]


def test_ledger_append_list_and_result_index(backend):
    ledger = backend.ledger_store
    run = make_run("r1")
    rec = StepRecord.start(run=run, node_id="a", effect=Effect(type=EffectType.TOOL_CALLS), idempotency_key="k1")
    ledger.append(rec)
    rec.finish_success({"v": 1})  # the same object, changed after it was appended
    ledger.append(rec)
    second = StepRecord.start(run=run, node_id="a", effect=None, idempotency_key="k1").finish_success({"v": 2})
    ledger.append(second)
    records = ledger.list("r1")
    assert [r["status"] for r in records] == ["started", "completed", "completed"]
    assert records[0]["result"] is None, "what was stored does not follow later changes"
    assert ledger.find_effect_result("r1", "k1") == {"v": 1}, "the first completed record wins"
    assert ledger.find_effect_result("r1", "nope") is None
    assert ledger.list("other") == []


# -- JSON files: crash safety and corruption ----------------------------------------------------


def test_corrupt_run_file_names_the_file_and_other_runs_still_load(tmp_path):
    store = JsonFileRunStore(tmp_path)
    store.save(make_run("good"))
    store.save(make_run("bad"))
    path = store.path_for("bad")
    path.write_bytes(path.read_bytes()[:20])  # truncated
    with pytest.raises(CorruptRecordError) as err:
        store.load("bad")
    assert str(path) in str(err.value) and isinstance(err.value, ValueError)
    assert store.load("good").run_id == "good"
    assert [r.run_id for r in store.list_runs()] == ["good"], "queries skip the unreadable file"
    path.write_text('{"run_id": "bad", "status": "running"}')
    with pytest.raises(CorruptRecordError, match="missing field 'workflow_id'"):
        store.load("bad")


def test_a_crash_mid_write_leaves_the_previous_state(tmp_path):
    """Kill a process while it rewrites a large run file: the file is the old one or the new one."""
    store = JsonFileRunStore(tmp_path)
    run = make_run("r1")
    run.vars = {"version": 0}
    store.save(run)
    script = textwrap.dedent(f"""
        import sys, os, threading
        sys.path.insert(0, {str(REPO)!r})
        from stores import JsonFileRunStore
        from runtime import RunState
        store = JsonFileRunStore({str(tmp_path)!r})
        run = store.load("r1")
        run.vars = {{"version": 1, "blob": "x" * 50_000_000}}
        threading.Timer(0.05, lambda: os._exit(9)).start()   # die in the middle of writing
        store.save(run)
        os._exit(0)
    """)
    proc = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert proc.returncode in (0, 9)
    loaded = store.load("r1")
    assert loaded.vars.get("version") in (0, 1)
    if loaded.vars["version"] == 1:
        assert len(loaded.vars["blob"]) == 50_000_000
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert all(name.startswith(".run_r1.json.") for name in leftovers)


def test_partial_last_ledger_line_is_ignored_then_cut(tmp_path):
    ledger = JsonlLedgerStore(tmp_path)
    run = make_run("r1")
    ledger.append(StepRecord.start(run=run, node_id="a", effect=None).finish_success(1))
    path = ledger.path_for("r1")
    with open(path, "ab") as f:
        f.write(b'{"run_id": "r1", "step_id": "half')  # a crash mid-append
    fresh = JsonlLedgerStore(tmp_path)
    assert len(fresh.list("r1")) == 1
    fresh.append(StepRecord.start(run=run, node_id="b", effect=None).finish_success(2))
    assert [r["node_id"] for r in fresh.list("r1")] == ["a", "b"]
    assert path.read_bytes().count(b"\n") == 2


def test_corrupt_ledger_line_names_file_and_line(tmp_path):
    ledger = JsonlLedgerStore(tmp_path)
    run = make_run("r1")
    for node in "abc":
        ledger.append(StepRecord.start(run=run, node_id=node, effect=None).finish_success(1))
    path = ledger.path_for("r1")
    lines = path.read_text().splitlines()
    lines[1] = "{not json"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorruptRecordError, match=r"line 2"):
        ledger.list("r1")


def test_index_sees_records_another_process_appended(tmp_path):
    mine, theirs = JsonlLedgerStore(tmp_path), JsonlLedgerStore(tmp_path)
    run = make_run("r1")
    assert mine.find_effect_result("r1", "k") is None
    theirs.append(StepRecord.start(run=run, node_id="a", effect=None, idempotency_key="k").finish_success("x"))
    assert mine.find_effect_result("r1", "k") == "x"
    mine.append(StepRecord.start(run=run, node_id="a", effect=None, idempotency_key="k2").finish_success("y"))
    assert theirs.find_effect_result("r1", "k2") == "y"


def test_run_files_are_plain_json_a_person_can_read(tmp_path):
    store = JsonFileRunStore(tmp_path)
    store.save(make_run("r1"))
    data = json.loads((tmp_path / "run_r1.json").read_text(encoding="utf-8"))
    assert data["run_id"] == "r1" and data["status"] == "running"
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))


def test_a_partial_line_left_after_this_store_appended_is_cut_too(tmp_path):
    ledger = JsonlLedgerStore(tmp_path)
    run = make_run("r1")
    ledger.append(StepRecord.start(run=run, node_id="a", effect=None).finish_success(1))
    with open(ledger.path_for("r1"), "ab") as f:  # another writer dies mid-line
        f.write(b'{"half')
    ledger.append(StepRecord.start(run=run, node_id="b", effect=None).finish_success(2))
    assert [r["node_id"] for r in ledger.list("r1")] == ["a", "b"]
