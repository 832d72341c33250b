"""Every backend ends a scenario in the same state with the same ledger as the in-memory one."""

from __future__ import annotations

import pytest

from runtime import Effect, EffectOutcome, EffectType, RetryPolicy, Runtime

from support.backends import BACKENDS, build_backend
from support.scenarios import ask, chain, one_effect, tool_loop

VOLATILE_STATE = {"run_id", "created_at", "updated_at"}
VOLATILE_RECORD = {"run_id", "step_id", "started_at", "ended_at", "prev_hash", "record_hash", "idempotency_key"}


def play(backend) -> list:
    """Run a mix of scenarios; return each run's state and ledger without ids and clocks."""
    flaky_calls = {"n": 0}

    def flaky(run, effect):
        flaky_calls["n"] += 1
        if flaky_calls["n"] % 2:
            return EffectOutcome.failed("try again")
        return EffectOutcome.completed({"call": flaky_calls["n"], "payload": effect.payload})

    rt = Runtime(run_store=backend.run_store, ledger_store=backend.ledger_store,
                 effect_handlers={EffectType.TOOL_CALLS: flaky}, effect_policy=RetryPolicy(backoff_base=0))
    runs = []
    for wf in (chain(4), tool_loop(3, {"q": "x"}),
               one_effect(Effect(type=EffectType.WAIT_UNTIL, payload={"until": "2020-01-01T00:00:00Z"},
                                 result_key="t")),
               one_effect(Effect(type=EffectType.WAIT_EVENT, payload={}), workflow_id="bad")):
        run_id = rt.start(workflow=wf, vars={"context": {"wf": wf.workflow_id}})
        rt.tick(workflow=wf, run_id=run_id)
        runs.append(run_id)
    wf = ask("Go?")
    run_id = rt.start(workflow=wf)
    state = rt.tick(workflow=wf, run_id=run_id)
    rt.resume(workflow=wf, run_id=run_id, wait_key=state.waiting.wait_key, payload={"ok": True})
    runs.append(run_id)

    out = []
    for rid in runs:
        state = {k: v for k, v in rt.get_state(rid).to_dict().items() if k not in VOLATILE_STATE}
        ledger = [{k: v for k, v in r.items() if k not in VOLATILE_RECORD} for r in rt.get_ledger(rid)]
        out.append((state, ledger))
    return out


@pytest.mark.parametrize("name", [b for b in BACKENDS if b != "memory"])
def test_same_final_states_and_ledgers_as_in_memory(name, tmp_path, request):
    client = None
    if name == "redis":
        client = request.getfixturevalue("redis_server").client()
    elif name == "fakeredis":
        import fakeredis

        client = fakeredis.FakeRedis(server=request.getfixturevalue("fake_redis_server"))
    elif name == "redis-cluster":
        client = request.getfixturevalue("redis_cluster_server").client()
    expected = play(build_backend("memory", tmp_path / "m"))
    got = play(build_backend(name, tmp_path / "x", client))
    # A waiting record holds the wait key, which names the run id: compare the rest of it.
    for (s_exp, l_exp), (s_got, l_got) in zip(expected, got):
        assert s_got == s_exp
        assert [{**r, "result": None} if r["status"] == "waiting" else r for r in l_got] == \
            [{**r, "result": None} if r["status"] == "waiting" else r for r in l_exp]
    assert [s["status"] for s, _ in got] == ["completed", "completed", "completed", "failed", "completed"]
