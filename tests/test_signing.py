"""Signed ledgers: every record's hash signed with its actor's Ed25519 key, checked by `verify`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from runtime import (
    Effect,
    EffectType,
    HashChainedLedgerStore,
    InMemoryLedgerStore,
    InMemoryRunStore,
    Runtime,
    verify_ledger_chain,
)
from runtime.models import EffectOutcome
from stores.signing import LedgerSigner, LedgerVerifier, SigningError, parse_key_spec

from support.celery_workers import WorkerGroup
from support.scenarios import one_effect

CLI = str(Path(sys.executable).with_name("abstractruntime"))


def keypair(folder: Path, name: str) -> tuple[Path, Path]:
    key = ed25519.Ed25519PrivateKey.generate()
    private = folder / f"{name}.pem"
    public = folder / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def test_records_are_signed_per_actor_and_checked(tmp_path):
    alice, alice_pub = keypair(tmp_path, "alice")
    other, other_pub = keypair(tmp_path, "other")
    signer = LedgerSigner.from_files({"alice": alice, "*": other})
    ledger = HashChainedLedgerStore(InMemoryLedgerStore(), signer=signer)
    rt = Runtime(run_store=InMemoryRunStore(), ledger_store=ledger,
                 effect_handlers={EffectType.TOOL_CALLS: lambda run, effect: EffectOutcome.completed({"ok": 1})})
    wf = one_effect(Effect(EffectType.TOOL_CALLS, {}, result_key="r"))
    mine = rt.start(workflow=wf, actor_id="alice")
    rt.tick(workflow=wf, run_id=mine)
    anyone = rt.start(workflow=wf)
    rt.tick(workflow=wf, run_id=anyone)
    records = rt.get_ledger(mine)
    assert all(r["signature"] for r in records) and verify_ledger_chain(records)["ok"]
    good = LedgerVerifier.from_files({"alice": alice_pub, "*": other_pub})
    assert good.verify(records)["ok"] and good.verify(rt.get_ledger(anyone))["ok"]
    wrong = LedgerVerifier.from_files({"alice": other_pub})
    report = wrong.verify(records)
    assert not report["ok"] and report["first_bad_index"] == 0 and report["errors"][0]["type"] == "bad_signature"
    unsigned = [{**r, "signature": None} for r in records]
    assert good.verify(unsigned)["errors"][0]["type"] == "missing_signature"
    with pytest.raises(SigningError, match="actor 'alice'.*not a PEM private key"):
        LedgerSigner.from_files({"alice": alice_pub})
    with pytest.raises(SigningError, match="cannot read the key of actor 'bob'"):
        LedgerVerifier.from_files({"bob": tmp_path / "missing.pem"})
    with pytest.raises(SigningError, match="expected actor=path.pem"):
        parse_key_spec("alice", "ABSTRACTRUNTIME_VERIFY_KEYS")


@pytest.mark.timeout(120)
def test_workers_sign_and_the_cli_checks_signatures(redis_server, tmp_path):
    alice, alice_pub = keypair(tmp_path, "alice")
    workers, workers_pub = keypair(tmp_path, "workers")
    g = WorkerGroup(redis_server.url, tmp_path / "g")
    g.env["ABSTRACTRUNTIME_SIGNING_KEYS"] = f"alice={alice},*={workers}"
    try:
        g.start_worker("w")
        os.environ["ABSTRACTRUNTIME_SIGNING_KEYS"] = g.env["ABSTRACTRUNTIME_SIGNING_KEYS"]
        try:
            client = g.client()
        finally:
            del os.environ["ABSTRACTRUNTIME_SIGNING_KEYS"]
        run_id = client.start("agent", actor_id="alice")
        client.wait_for(run_id, ["waiting"], timeout=30)
        client.respond(run_id, "yes")
        client.wait_for(run_id, ["completed"], timeout=30)
        assert all(r["signature"] for r in client.get_ledger(run_id))

        def verify(spec: str) -> subprocess.CompletedProcess:
            env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_")}
            env.update(g.env, ABSTRACTRUNTIME_VERIFY_KEYS=spec, PYTHONPATH=str(Path(__file__).parent))
            return subprocess.run([CLI, "--json", "verify", run_id], env=env, capture_output=True, text=True,
                                  timeout=60)

        ok = verify(f"alice={alice_pub},*={workers_pub}")
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["signatures"] is True
        forged = verify(f"alice={workers_pub}")  # as if someone else had written alice's records
        assert forged.returncode == 6
        bad = json.loads(forged.stdout)["bad"][0]
        assert bad["first_bad_index"] == 0 and bad["first_error"]["type"] == "bad_signature"
        unreadable = verify(f"alice={tmp_path / 'nope.pem'}")
        assert unreadable.returncode == 2 and "cannot read the key of actor 'alice'" in unreadable.stderr
    finally:
        g.close()
