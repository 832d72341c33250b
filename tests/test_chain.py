"""The hash-chained ledger: same hashes on every backend, and tampering detected."""

from __future__ import annotations

import hashlib
import json

import pytest

from runtime import (
    Effect,
    EffectOutcome,
    EffectType,
    HashChainedLedgerStore,
    InMemoryLedgerStore,
    RunState,
    Runtime,
    StepRecord,
    compute_record_hash,
    verify_ledger_chain,
)
from stores import JsonlLedgerStore

CHAINED = ["memory+chain", "jsonfile+chain"]


def fixed_records(run_id: str = "r1") -> list[StepRecord]:
    run = RunState.new(workflow_id="w", entry_node="a", run_id=run_id, actor_id="ä-actor")
    out = []
    for i in range(4):
        rec = StepRecord.start(run=run, node_id=f"n{i}", effect=Effect(type=EffectType.TOOL_CALLS, payload={"i": i}),
                               idempotency_key=f"k{i}")
        rec.step_id = f"s{i}"
        rec.started_at = "2026-01-01T00:00:00+00:00"
        rec.finish_success({"text": "héllo", "i": i})
        rec.ended_at = "2026-01-01T00:00:01+00:00"
        out.append(rec)
    return out


def test_record_hash_recipe():
    """SHA-256 of UTF-8 canonical JSON, prev_hash included (null first), record_hash and signature left out."""
    rec = fixed_records()[0]
    body = rec.to_dict()
    body.pop("record_hash")
    body.pop("signature")
    body["prev_hash"] = None
    expected = hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    ).hexdigest()
    assert compute_record_hash(record=rec, prev_hash=None) == expected
    assert len(expected) == 64


def test_same_records_same_hashes_on_every_backend(tmp_path):
    heads = []
    for inner in (InMemoryLedgerStore(), JsonlLedgerStore(tmp_path)):
        store = HashChainedLedgerStore(inner)
        for rec in fixed_records():
            store.append(rec)
        records = store.list("r1")
        assert records[0]["prev_hash"] is None
        assert all(records[i]["prev_hash"] == records[i - 1]["record_hash"] for i in range(1, 4))
        heads.append([r["record_hash"] for r in records])
    assert heads[0] == heads[1]


def test_chain_continues_across_a_restart(tmp_path):
    store = HashChainedLedgerStore(JsonlLedgerStore(tmp_path))
    recs = fixed_records()
    for rec in recs[:2]:
        store.append(rec)
    reopened = HashChainedLedgerStore(JsonlLedgerStore(tmp_path))
    for rec in recs[2:]:
        reopened.append(rec)
    report = reopened.verify("r1")
    assert report["ok"] and report["count"] == 4


@pytest.fixture(params=CHAINED)
def chained_run(request, tmp_path):
    """A finished run with 5 chained records, and a way to rewrite its stored ledger."""
    from support.backends import build_backend

    backend = build_backend(request.param, tmp_path / "data")
    handler = {EffectType.TOOL_CALLS: lambda run, eff: EffectOutcome.completed({"n": eff.payload["n"]})}
    rt = Runtime(run_store=backend.run_store, ledger_store=backend.ledger_store, effect_handlers=handler)

    def node(i):
        def fn(run, ctx):
            from runtime import StepPlan

            if i == 2:
                return StepPlan(node_id="n2", complete_output={"ok": True})
            return StepPlan(node_id=f"n{i}", effect=Effect(type=EffectType.TOOL_CALLS, payload={"n": i}),
                            next_node=f"n{i + 1}")
        return fn

    from runtime import WorkflowSpec

    wf = WorkflowSpec(workflow_id="w", entry_node="n0", nodes={f"n{i}": node(i) for i in range(3)})
    run_id = rt.start(workflow=wf)
    rt.tick(workflow=wf, run_id=run_id)
    records = rt.get_ledger(run_id)
    assert len(records) == 5 and verify_ledger_chain(records)["ok"]

    def rewrite(new_records):
        inner = backend.ledger_store.inner
        if isinstance(inner, InMemoryLedgerStore):
            inner._lines[run_id] = [json.dumps(r) for r in new_records]
        else:
            inner.path_for(run_id).write_text("".join(json.dumps(r) + "\n" for r in new_records))
        return backend.ledger_store.list(run_id)

    return records, rewrite, backend.ledger_store, run_id


def test_verifier_detects_an_edited_record(chained_run):
    records, rewrite, _, _ = chained_run
    edited = [dict(r) for r in records]
    edited[1]["result"] = {"n": 999}
    report = verify_ledger_chain(rewrite(edited))
    assert not report["ok"] and report["first_bad_index"] == 1
    assert [(e["index"], e["type"]) for e in report["errors"]] == [(1, "record_hash_mismatch")]
    assert report["errors"][0]["stored"] == records[1]["record_hash"]
    assert report["head_hash"] == records[-1]["record_hash"]
    assert report["computed_head_hash"] != report["head_hash"], "recomputed from contents, not copied (D3)"


def test_verifier_detects_reordered_records(chained_run):
    records, rewrite, _, _ = chained_run
    swapped = [records[0], records[2], records[1], records[3], records[4]]
    report = verify_ledger_chain(rewrite(swapped))
    assert not report["ok"] and report["first_bad_index"] == 1
    assert {e["type"] for e in report["errors"]} == {"prev_hash_mismatch"}


def test_verifier_detects_a_deleted_record(chained_run):
    records, rewrite, store, run_id = chained_run
    report = verify_ledger_chain(rewrite(records[:2] + records[3:]))
    assert not report["ok"] and report["first_bad_index"] == 2
    assert report["errors"][0]["type"] == "prev_hash_mismatch"
    assert report["errors"][0]["expected_prev_hash"] == records[1]["record_hash"]


def test_deleting_the_newest_record_is_caught_against_the_stored_head(chained_run):
    records, rewrite, store, run_id = chained_run
    rewrite(records[:-1])
    assert verify_ledger_chain(store.list(run_id))["ok"], "records alone cannot show a cut tail"
    report = store.verify(run_id)
    assert not report["ok"] and report["errors"][0]["type"] == "head_mismatch"


def test_first_bad_index_zero_is_reported():
    """Decision D3: 0.2.0 overwrote an error at index 0 with the next bad index."""
    store = HashChainedLedgerStore(InMemoryLedgerStore())
    for rec in fixed_records():
        store.append(rec)
    records = store.list("r1")
    records[0]["node_id"] = "tampered"
    records[1]["node_id"] = "tampered too"
    report = verify_ledger_chain(records)
    assert report["first_bad_index"] == 0 and [e["index"] for e in report["errors"]] == [0, 1]


def test_missing_hash_stops_the_walk_and_empty_ledger_is_ok():
    store = HashChainedLedgerStore(InMemoryLedgerStore())
    for rec in fixed_records():
        store.append(rec)
    records = store.list("r1")
    records[1]["record_hash"] = None
    report = verify_ledger_chain(records)
    assert report["errors"] == [{"index": 1, "type": "missing_record_hash"}]
    assert verify_ledger_chain([]) == {"ok": True, "count": 0, "errors": [], "first_bad_index": None,
                                       "head_hash": None, "computed_head_hash": None}


def test_two_processes_taking_turns_keep_one_chain(tmp_path):
    """A run resumed by another process, then by the first again, still verifies."""
    recs = fixed_records()
    first = HashChainedLedgerStore(JsonlLedgerStore(tmp_path))
    second = HashChainedLedgerStore(JsonlLedgerStore(tmp_path))
    first.append(recs[0])
    second.append(recs[1])
    first.append(recs[2])
    second.append(recs[3])
    assert verify_ledger_chain(first.list("r1"))["ok"]
    assert first.verify("r1")["ok"] and second.verify("r1")["ok"]
