"""Retrying a failed run, and operator actions in the ledger (issue 13, items 5 and 6).

Fast stories through ``Engine`` and the stub dispatcher on real Redis and fakeredis; the
acceptance on real Celery workers and the CLI is at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runtime import RunStatus
from runtime.errors import RunNotFailed, RunNotFound, UnknownNodeError
from stores.redis import RedisBackend
from workers.registry import registry
from workers.settings import WorkerSettings
from workers.testing import StubDispatcher, make_stub_engine

import support.celery_scenarios  # noqa: F401  (registers the workflows)
from support.backends import redis_backend

pytestmark = pytest.mark.timeout(60)


def stub_engine(store: RedisBackend) -> tuple[Any, StubDispatcher]:
    return make_stub_engine(store, registry, WorkerSettings(tick_max_attempts=2, tick_backoff_s=0.1))


def state_of(store: RedisBackend, run_id: str) -> Any:
    state = store.runs.load(run_id)
    assert state is not None, run_id
    return state


def files(tmp_path: Path) -> dict[str, str]:
    return {"counter": str(tmp_path / "calls.txt"), "fixed": str(tmp_path / "fixed")}


def calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls.txt").read_text().splitlines()


def operator_records(store: RedisBackend, run_id: str, kind: str) -> list[dict[str, Any]]:
    return [r for r in store.ledger.list(run_id) if (r.get("effect") or {}).get("type") == kind]


def test_a_failed_run_is_retried_at_its_failed_node_and_earlier_steps_are_not_run_again(store, tmp_path):
    # Given a run whose node a3 raises until a fix is deployed, after a1 and a2 called a tool
    engine, stub = stub_engine(store)
    run_id = engine.create(registry.workflows.get_or_raise("fix_me"), vars=files(tmp_path))
    stub.run_until_quiet(engine)
    failed = state_of(store, run_id)
    assert (failed.status, failed.current_node) == (RunStatus.FAILED, "a3")
    assert calls(tmp_path) == ["a1", "a2"]
    head = store.ledger.chain_head(run_id)
    # If the fix is deployed and the operator retries
    (tmp_path / "fixed").touch()
    retried = engine.retry(run_id, reason="deployed the a3 fix", actor="ops@example")
    assert (retried.status, retried.current_node, retried.error) == (RunStatus.RUNNING, "a3", None)
    stub.run_until_quiet(engine)
    # I expect it to complete without calling the tool of a1 and a2 again
    done = state_of(store, run_id)
    assert done.status == RunStatus.COMPLETED
    assert calls(tmp_path) == ["a1", "a2"]
    assert sorted(done.output["calls"]) == ["a1", "a2"]
    # and the ledger to name who retried, why, from where and the head it continues from
    [record] = operator_records(store, run_id, "operator_retry")
    assert record["actor_id"] == "ops@example"
    assert record["result"]["by"] == "ops@example" and record["result"]["reason"] == "deployed the a3 fix"
    assert record["result"]["from_node"] == "a3" and record["result"]["continues_from"] == head
    assert record["prev_hash"] == head
    assert store.ledger.verify(run_id)["ok"]


def test_from_node_continues_at_the_node_named(store, tmp_path):
    engine, stub = stub_engine(store)
    run_id = engine.create(registry.workflows.get_or_raise("fix_me"), vars=files(tmp_path))
    stub.run_until_quiet(engine)
    (tmp_path / "fixed").touch()
    engine.retry(run_id, reason="re-run a2 too", actor="ops", from_node="a2")
    stub.run_until_quiet(engine)
    assert state_of(store, run_id).status == RunStatus.COMPLETED
    assert calls(tmp_path) == ["a1", "a2", "a2"]  # a2 ran again, as asked; a1 did not
    assert store.ledger.verify(run_id)["ok"]


def test_an_effect_that_failed_for_good_gets_a_fresh_attempt_series(store):
    engine, stub = stub_engine(store)
    run_id = engine.create(registry.workflows.get_or_raise("llm_broken"))
    stub.run_until_quiet(engine)
    assert state_of(store, run_id).status == RunStatus.FAILED
    first = [r for r in store.ledger.list(run_id) if r.get("idempotency_key")]
    engine.retry(run_id, reason="provider back", actor="ops")
    stub.run_until_quiet(engine)
    assert state_of(store, run_id).status == RunStatus.FAILED  # still broken: three new attempts
    later = [r for r in store.ledger.list(run_id) if r.get("idempotency_key")][len(first):]
    assert [r["attempt"] for r in later if r["status"] == "started"] == [1, 2, 3]
    assert {r["idempotency_key"] for r in later}.isdisjoint({r["idempotency_key"] for r in first})
    assert store.ledger.verify(run_id)["ok"]


def test_a_parent_failed_by_its_child_waits_on_the_retried_child_and_resumes(store, tmp_path):
    # Given a parent whose sync child fails at a3
    engine, stub = stub_engine(store)
    parent_id = engine.create(registry.workflows.get_or_raise("parent_of_fix_me"), vars=files(tmp_path))
    stub.run_until_quiet(engine)
    parent = state_of(store, parent_id)
    assert parent.status == RunStatus.FAILED and "fix_me" in (parent.error or "")
    [child_id] = store.children_of(parent_id)
    assert state_of(store, child_id).status == RunStatus.FAILED
    # If the operator retries the parent (or the child: the same), once fixed
    (tmp_path / "fixed").touch()
    again = engine.retry(parent_id, reason="fixed a3", actor="ops")
    # I expect the parent to wait on the same child again, and the child to run from a3
    assert again.status == RunStatus.WAITING and again.waiting.details["sub_run_id"] == child_id
    assert state_of(store, child_id).status == RunStatus.RUNNING
    stub.run_until_quiet(engine)
    assert state_of(store, child_id).status == RunStatus.COMPLETED
    done = state_of(store, parent_id)
    assert done.status == RunStatus.COMPLETED and done.output["child"]["sub_run_id"] == child_id
    assert calls(tmp_path) == ["a1", "a2"]
    assert store.children_of(parent_id) == [child_id]  # no second child
    for rid in (parent_id, child_id):
        [record] = operator_records(store, rid, "operator_retry")
        assert record["result"]["reason"] == "fixed a3"
        assert store.ledger.verify(rid)["ok"]


def test_retrying_the_child_re_parks_its_failed_parent(store, tmp_path):
    engine, stub = stub_engine(store)
    parent_id = engine.create(registry.workflows.get_or_raise("parent_of_fix_me"), vars=files(tmp_path))
    stub.run_until_quiet(engine)
    [child_id] = store.children_of(parent_id)
    (tmp_path / "fixed").touch()
    engine.retry(child_id, reason="fixed a3", actor="ops")
    assert state_of(store, parent_id).status == RunStatus.WAITING
    stub.run_until_quiet(engine)
    assert state_of(store, parent_id).status == RunStatus.COMPLETED


def test_refusals_write_nothing(store, tmp_path):
    engine, stub = stub_engine(store)
    with pytest.raises(RunNotFound):
        engine.retry("nope", reason="x", actor="ops")
    asking = engine.create(registry.workflows.get_or_raise("ask"))
    stub.run_until_quiet(engine)
    before = store.ledger.list(asking)
    with pytest.raises(RunNotFailed) as info:
        engine.retry(asking, reason="x", actor="ops")
    assert info.value.run_id == asking and info.value.status == RunStatus.WAITING
    engine.cancel(asking, reason="stop", actor="ops")
    with pytest.raises(RunNotFailed, match="cancelled"):
        engine.retry(asking, reason="x", actor="ops")
    failed = engine.create(registry.workflows.get_or_raise("fix_me"), vars=files(tmp_path))
    stub.run_until_quiet(engine)
    with pytest.raises(UnknownNodeError):
        engine.retry(failed, reason="x", actor="ops", from_node="zz")
    with pytest.raises(ValueError, match="reason"):
        engine.retry(failed, reason="  ", actor="ops")
    assert state_of(store, failed).status == RunStatus.FAILED
    assert not operator_records(store, failed, "operator_retry")
    assert len(store.ledger.list(asking)) == len(before) + 1  # only the cancel's record


def test_cancel_records_the_operator_in_each_cancelled_run(store):
    engine, stub = stub_engine(store)
    run_id = engine.create(registry.workflows.get_or_raise("grandparent"))
    stub.run_until_quiet(engine)
    cancelled = engine.cancel(run_id, reason="stop", actor="ops@example")
    assert len(cancelled) == 3
    for run in cancelled:
        [record] = operator_records(store, run.run_id, "operator_cancel")
        assert record["actor_id"] == "ops@example"
        assert record["result"]["reason"] == "stop" and record["result"]["by"] == "ops@example"
        assert store.ledger.verify(run.run_id)["ok"]


# -- acceptance: real Celery workers, through the CLI a user types ---------------------------------

CLI = str(Path(sys.executable).with_name("abstractruntime"))
TESTS_DIR = Path(__file__).resolve().parent


def cli(group: Any, *args: str, actor: str = "alice@ops") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_") and k != "PYTHONPATH"}
    env.update(group.env)
    env["PYTHONPATH"] = str(TESTS_DIR)
    env["ABSTRACTRUNTIME_ACTOR"] = actor
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=60)


def refused(proc: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert proc.returncode == code, f"exit {proc.returncode}, wanted {code}: {proc.stdout} {proc.stderr}"
    line = proc.stderr.strip()
    assert line.startswith("error: ") and "\n" not in line, proc.stderr
    for word in words:
        assert word in line, line


def stored(client: Any, run_id: str) -> tuple:
    b = client.backend
    return b.client.hgetall(b.keys.run(run_id)), b.client.xlen(b.keys.ledger(run_id))


@pytest.mark.timeout(180)
def test_cli_retry_on_real_workers_reruns_from_the_failed_node_only(group, client, tmp_path):
    # Given a run on real workers that failed at a3 after a1 and a2 called the counting tool
    rid = client.start("fix_me", vars=files(tmp_path))
    assert client.wait_for(rid, ["failed"], timeout=60).current_node == "a3"
    assert calls(tmp_path) == ["a1", "a2"]
    before = stored(client, rid)
    # Bad input is refused and changes nothing
    refused(cli(group, "retry", rid), 2, "--reason")
    refused(cli(group, "retry", rid, "--reason", "  "), 2, "--reason")
    refused(cli(group, "retry", "no-such-run", "--reason", "x"), 3, "no-such-run")
    refused(cli(group, "retry", rid, "--from-node", "zz", "--reason", "x"), 2, "zz", "fix_me")
    assert stored(client, rid) == before
    # If the fix is deployed and the operator retries
    (tmp_path / "fixed").touch()
    out = cli(group, "--json", "retry", rid, "--reason", "deployed the a3 fix")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["current_node"] == "a3"
    # I expect it to complete without running a1 and a2 again, and the ledger to say who and why
    assert client.wait_for(rid, ["completed"], timeout=60).status == RunStatus.COMPLETED
    assert calls(tmp_path) == ["a1", "a2"]
    [record] = [r for r in client.get_ledger(rid) if (r.get("effect") or {}).get("type") == "operator_retry"]
    assert record["actor_id"] == "alice@ops" and record["result"]["reason"] == "deployed the a3 fix"
    assert record["result"]["from_node"] == "a3"
    assert client.verify(rid)["ok"]
    # A run that did not fail is refused, naming the run and its status
    refused(cli(group, "retry", rid, "--reason", "again"), 4, rid, "completed")


@pytest.mark.timeout(180)
def test_cli_retry_on_real_workers_through_a_failed_sync_child(group, client, tmp_path):
    parent = client.start("parent_of_fix_me", vars=files(tmp_path))
    assert client.wait_for(parent, ["failed"], timeout=60).status == RunStatus.FAILED
    [child] = client.backend.children_of(parent)
    (tmp_path / "fixed").touch()
    out = cli(group, "--json", "retry", parent, "--reason", "fixed a3 in the child")
    assert out.returncode == 0, out.stderr
    done = client.wait_for(parent, ["completed"], timeout=60)
    assert done.output["child"]["sub_run_id"] == child
    assert client.get_state(child).status == RunStatus.COMPLETED
    assert calls(tmp_path) == ["a1", "a2"]
    for rid in (parent, child):
        assert client.verify(rid)["ok"]
        assert any((r.get("effect") or {}).get("type") == "operator_retry" and r["actor_id"] == "alice@ops"
                   for r in client.get_ledger(rid))


@pytest.mark.timeout(180)
def test_cli_cancel_records_the_actor(group, client):
    rid = client.start("ask")
    client.wait_for(rid, ["waiting"], timeout=60)
    out = cli(group, "--json", "cancel", rid, "--reason", "no longer needed", actor="bob@ops")
    assert out.returncode == 0, out.stderr
    [record] = [r for r in client.get_ledger(rid) if (r.get("effect") or {}).get("type") == "operator_cancel"]
    assert record["actor_id"] == "bob@ops" and record["result"]["reason"] == "no longer needed"
    assert client.verify(rid)["ok"]


def test_operator_records_are_signed_by_the_operators_key(fake_redis_server, tmp_path):
    # Given signing on, with a key for the operator and one for everyone else
    import fakeredis
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from stores.signing import LedgerSigner, LedgerVerifier

    def keypair(name: str) -> tuple[Path, Path]:
        key = ed25519.Ed25519PrivateKey.generate()
        private, public = tmp_path / f"{name}.pem", tmp_path / f"{name}.pub.pem"
        private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo))
        return private, public

    (ops, ops_pub), (other, other_pub) = keypair("ops"), keypair("other")
    store = redis_backend(fakeredis.FakeRedis(server=fake_redis_server),
                          signer=LedgerSigner.from_files({"ops": ops, "*": other}))
    engine, stub = stub_engine(store)
    run_id = engine.create(registry.workflows.get_or_raise("fix_me"), vars=files(tmp_path))
    stub.run_until_quiet(engine)
    (tmp_path / "fixed").touch()
    engine.retry(run_id, reason="fixed", actor="ops")
    stub.run_until_quiet(engine)
    records = store.ledger.list(run_id)
    # I expect the retry record signed by the operator's key: a verifier without it refuses it
    [index] = [i for i, r in enumerate(records) if (r.get("effect") or {}).get("type") == "operator_retry"]
    assert LedgerVerifier.from_files({"ops": ops_pub, "*": other_pub}).verify(records)["ok"]
    report = LedgerVerifier.from_files({"ops": other_pub, "*": other_pub}).verify(records)
    assert not report["ok"] and report["first_bad_index"] == index
