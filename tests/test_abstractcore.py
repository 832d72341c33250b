"""LLM and tool calls through AbstractCore: in process and on Celery workers, local, remote and hybrid.

A loopback fake OpenAI server (``tests/support/fake_openai.py``) plays the provider; the real
AbstractCore server (``python -m abstractcore.server``) runs in front of it for the remote
and hybrid modes. The fake counts requests, which is how the tests see that a paid call is
not repeated once its result was recorded.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from runtime import Effect, EffectType, RetryPolicy, RunStatus
from runtime.integrations.abstractcore import (
    HttpStatusError,
    LLMCallError,
    LocalAbstractCoreLLMClient,
    MappingToolExecutor,
    RemoteAbstractCoreLLMClient,
    UrllibRequestSender,
    create_hybrid_runtime,
    create_local_runtime,
    create_remote_runtime,
)
from runtime.integrations.abstractcore.llm_client import HttpResponse

from support import agent_scenarios
from support.celery_scenarios import add
from support.celery_workers import WorkerGroup
from support.driver_compare import delivery_records
from support.fake_openai import FakeOpenAI
from support.redis_server import free_port
from support.scenarios import one_effect

abstractcore = pytest.importorskip("abstractcore", reason="the abstractcore package is in the dev extra")

pytestmark = pytest.mark.timeout(180)
TOKEN = "test-token-" + uuid.uuid4().hex[:8]
EXPECTED_ANSWER = 'answer: 5; "WHAT IS 2 + 3?!"'
SHAPE = [("think", "started"), ("think", "completed"), ("approve", "started"), ("approve", "waiting"),
         ("act", "started"), ("act", "completed"), ("think", "started"), ("think", "completed"),
         ("route", "completed")]


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(scope="module")
def ac_server(tmp_path_factory, fake):
    """The real AbstractCore server on a free loopback port, with a bearer token."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("ac") / "server.log", "wb")
    # The server's openai-compatible provider reaches the fake through its default base URL.
    env = {**os.environ, "ABSTRACTCORE_AUTH_TOKEN": TOKEN, "OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "x"}
    proc = subprocess.Popen([sys.executable, "-m", "abstractcore.server", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"the AbstractCore server did not start: {Path(log.name).read_text()[-2000:]}") \
                    from None
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)
    log.close()


TOOLS = MappingToolExecutor({"add": add, "shout": agent_scenarios.shout})


def drive(rt, question: str, *, approve: str = "yes", tool_results=None) -> tuple:
    """Run the ReAct workflow in process: approve the tools, pass tool results through if asked."""
    wf = agent_scenarios.registry.workflows.get_or_raise("react")
    run_id = rt.start(workflow=wf, vars={"question": question})
    state = rt.tick(workflow=wf, run_id=run_id)
    assert state.status == RunStatus.WAITING and state.waiting.prompt == "Run add, shout?", state
    state = rt.resume(workflow=wf, run_id=run_id, wait_key=state.waiting.wait_key, payload=approve)
    if state.status == RunStatus.WAITING and state.waiting.details and state.waiting.details.get("mode"):
        assert tool_results is not None, "passthrough tools wait for the host"
        calls = state.waiting.details["tool_calls"]
        state = rt.resume(workflow=wf, run_id=run_id, wait_key=state.waiting.wait_key,
                          payload={"mode": "executed", "results": tool_results(calls)})
    return state, rt.get_ledger(run_id)


def host_runs(calls):
    """What a host does with passthrough tool calls: run them itself."""
    return TOOLS.execute(calls)["results"]


def test_three_modes_in_process_give_the_same_answer_and_ledger_shape(fake, ac_server):
    registry = abstractcore.tools.get_registry()  # the hybrid mode runs AbstractCore's global registry
    registry.register(add)
    registry.register(agent_scenarios.shout)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    local = create_local_runtime(provider="openai-compatible", model="gpt-4o-mini", tool_executor=TOOLS,
                                 llm_kwargs={"base_url": fake.base_url, "api_key": "", "timeout": 30})
    remote = create_remote_runtime(server_base_url=ac_server, model="openai-compatible/gpt-4o-mini", headers=auth)
    hybrid = create_hybrid_runtime(server_base_url=ac_server, model="openai-compatible/gpt-4o-mini", headers=auth)
    results = {}
    for name, rt in (("local", local), ("remote", remote), ("hybrid", hybrid)):
        state, ledger = drive(rt, "what is 2 + 3?", tool_results=host_runs)
        results[name] = (state, ledger)
        assert state.status == RunStatus.COMPLETED, (name, state.error)
        assert state.output == {"answer": EXPECTED_ANSWER}, name
    shapes = {name: [(r["node_id"], r["status"]) for r in ledger] for name, (_s, ledger) in results.items()}
    assert shapes["local"] == shapes["hybrid"] == SHAPE
    # Passthrough: the tool step waits for the host (a `waiting` record) instead of completing.
    assert shapes["remote"] == [*SHAPE[:5], ("act", "waiting"), *SHAPE[6:]]
    usage = results["local"][0].vars["_limits"]["estimated_tokens_used"]
    assert usage > 0  # real usage reaches the limits


def test_large_results_are_stored_as_artifacts_and_the_run_keeps_the_reference(fake):
    from runtime import Effect, InMemoryArtifactStore, InMemoryLedgerStore, InMemoryRunStore, Runtime
    from runtime.artifacts import get_artifact_id, is_artifact_ref
    from runtime.integrations.abstractcore import build_effect_handlers

    artifacts = InMemoryArtifactStore()
    llm = RemoteAbstractCoreLLMClient(server_base_url=fake.base_url, model="gpt-4o-mini")
    rt = Runtime(run_store=InMemoryRunStore(), ledger_store=InMemoryLedgerStore(),
                 effect_handlers=build_effect_handlers(llm=llm, tools=TOOLS, artifact_store=artifacts,
                                                       max_inline_bytes=600))
    small = one_effect(Effect(EffectType.LLM_CALL, {"prompt": "hi"}, result_key="r"), workflow_id="small")
    big = one_effect(Effect(EffectType.LLM_CALL, {"prompt": "x" * 1000}, result_key="r"), workflow_id="big")
    assert not is_artifact_ref(rt.tick(workflow=small, run_id=rt.start(workflow=small)).output["r"])
    run_id = rt.start(workflow=big)
    ref = rt.tick(workflow=big, run_id=run_id).output["r"]
    assert is_artifact_ref(ref)
    assert artifacts.load_json(get_artifact_id(ref))["content"] == "echo: " + "x" * 1000
    assert [m.run_id for m in artifacts.list_by_run(run_id)] == [run_id]


def test_the_remote_client_sends_trace_headers_and_reads_the_trace_id(fake):
    llm = RemoteAbstractCoreLLMClient(server_base_url=fake.base_url, model="gpt-4o-mini")
    result = llm.generate(prompt="hi", params={"trace_metadata": {"run_id": "r-1", "actor_id": "a-1"},
                                                "temperature": 0})
    assert set(result) == {"content", "data", "tool_calls", "usage", "model", "finish_reason", "metadata",
                           "trace_id"}
    assert result["content"] == "echo: hi" and result["trace_id"].startswith("trace-")
    headers = {k.lower(): v for k, v in fake.requests[-1]["headers"].items()}
    assert headers["x-abstractcore-run-id"] == "r-1" and headers["x-abstractcore-actor-id"] == "a-1"
    assert json.loads(headers["x-abstractcore-trace-metadata"]) == {"run_id": "r-1", "actor_id": "a-1"}
    assert fake.requests[-1]["body"]["temperature"] == 0 and fake.requests[-1]["body"]["stream"] is False
    # A header the caller set is never overridden.
    mine = RemoteAbstractCoreLLMClient(server_base_url=fake.base_url, model="gpt-4o-mini",
                                       headers={"X-AbstractCore-Run-Id": "mine"})
    mine.generate(prompt="hi", params={"trace_metadata": {"run_id": "r-2"}})
    assert {k.lower(): v for k, v in fake.requests[-1]["headers"].items()}["x-abstractcore-run-id"] == "mine"


def test_remote_client_errors_say_whether_to_retry(fake):
    llm = RemoteAbstractCoreLLMClient(server_base_url=fake.base_url, model="gpt-4o-mini", timeout_s=0.5)
    for prompt, retryable, words in (("fail500", True, "HTTP 500"), ("fail400", False, "HTTP 400"),
                                     ("notjson", False, "not an OpenAI chat completion"),
                                     ("slow:2", True, "cannot reach")):
        with pytest.raises(LLMCallError, match=words) as info:
            llm.generate(prompt=prompt)
        assert info.value.retryable is retryable, prompt
    refused = RemoteAbstractCoreLLMClient(server_base_url=f"http://127.0.0.1:{free_port()}", model="m")
    with pytest.raises(LLMCallError, match="cannot reach") as info:
        refused.generate(prompt="hi")
    assert info.value.retryable


class RecordingSender:
    """A request sender as a host would write one: it records each request and answers itself."""

    def __init__(self, reply):
        self.reply = reply
        self.requests: list[dict] = []

    def post(self, url, *, headers, json, timeout):
        self.requests.append({"url": url, "headers": dict(headers), "json": json, "timeout": timeout})
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


CHAT_REPLY = {"model": "m", "choices": [{"message": {"content": "ok", "tool_calls": [
    {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]},
    "finish_reason": "tool_calls"}]}


def test_an_injected_request_sender_carries_the_request():
    sender = RecordingSender(HttpResponse(body=CHAT_REPLY, headers={"X-AbstractCore-Trace-Id": "tr_remote"}))
    llm = RemoteAbstractCoreLLMClient(server_base_url="http://llm.invalid", model="m", timeout_s=7,
                                      headers={"User-Agent": "test"}, request_sender=sender)
    result = llm.generate(prompt="hi", params={"trace_metadata": {"run_id": "r1", "actor_id": "a1"},
                                               "base_url": "http://upstream.invalid/v1", "seed": 3})
    assert result["trace_id"] == "tr_remote" and result["content"] == "ok"
    assert result["tool_calls"] == [{"name": "add", "arguments": {"a": 1, "b": 2}, "call_id": "c1"}]
    (request,) = sender.requests
    assert request["url"] == "http://llm.invalid/v1/chat/completions" and request["timeout"] == 7
    assert request["json"] == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False,
                               "base_url": "http://upstream.invalid/v1", "seed": 3}
    assert request["headers"]["X-AbstractCore-Run-Id"] == "r1" and request["headers"]["User-Agent"] == "test"
    assert json.loads(request["headers"]["X-AbstractCore-Trace-Metadata"]) == {"run_id": "r1", "actor_id": "a1"}
    # A sender may return the body alone; there is then no trace id to read.
    plain = RemoteAbstractCoreLLMClient(server_base_url="http://llm.invalid", model="m",
                                        request_sender=RecordingSender(CHAT_REPLY))
    assert plain.generate(prompt="hi")["content"] == "ok" and plain.generate(prompt="hi")["trace_id"] is None


class StatusError(Exception):
    """What a sender built on another HTTP library raises: an error carrying the status."""

    def __init__(self, status_code):
        super().__init__(f"server said {status_code}")
        self.status_code = status_code


@pytest.mark.parametrize(("raised", "retryable", "words"), [
    (StatusError(503), True, "HTTP 503"), (StatusError(429), True, "HTTP 429"), (StatusError(404), False, "HTTP 404"),
    (ConnectionRefusedError("refused"), True, "cannot reach"), (RuntimeError("boom"), True, "RuntimeError"),
])
def test_a_senders_errors_say_whether_to_retry(raised, retryable, words):
    llm = RemoteAbstractCoreLLMClient(server_base_url="http://u:secret@llm.invalid", model="m",
                                      request_sender=RecordingSender(raised))
    with pytest.raises(LLMCallError, match=words) as info:
        llm.generate(prompt="hi")
    assert info.value.retryable is retryable
    assert "secret" not in str(info.value)  # the URL's password is masked


def test_the_default_sender_is_the_standard_librarys(fake):
    llm = RemoteAbstractCoreLLMClient(server_base_url=fake.base_url, model="gpt-4o-mini")
    assert isinstance(llm.request_sender, UrllibRequestSender)
    sent = UrllibRequestSender().post(f"{fake.base_url}/chat/completions", headers={"X-Test": "1"},
                                      json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "yo"}]},
                                      timeout=5)
    assert isinstance(sent, HttpResponse) and sent.body["choices"][0]["message"]["content"] == "echo: yo"
    assert sent.headers["X-Trace-Id"].startswith("trace-")
    assert fake.requests[-1]["headers"]["X-Test"] == "1"
    assert fake.requests[-1]["headers"]["Content-Type"] == "application/json"
    # A reply that is not JSON comes back as text; an error status raises with the status.
    text = UrllibRequestSender().post(f"{fake.base_url}/chat/completions", headers={}, timeout=5,
                                      json={"messages": [{"role": "user", "content": "notjson"}]})
    assert text.body == "<html>surprise</html>"
    with pytest.raises(HttpStatusError) as info:
        UrllibRequestSender().post(f"{fake.base_url}/chat/completions", headers={}, timeout=5,
                                   json={"messages": [{"role": "user", "content": "fail400"}]})
    assert info.value.status_code == 400 and "model does not exist" in info.value.detail


class KeywordOnlyExecutor:
    """An executor written for 0.2.0, which calls ``execute(tool_calls=...)``."""

    def __init__(self):
        self.seen: list = []

    def execute(self, *, tool_calls):
        self.seen.append(tool_calls)
        return {"mode": "executed", "results": [{"call_id": c.get("call_id"), "name": c["name"], "success": True,
                                                 "output": "done", "error": None} for c in tool_calls]}


def test_tool_calls_reach_a_keyword_only_executor():
    from runtime import Effect, InMemoryLedgerStore, InMemoryRunStore, Runtime
    from runtime.integrations.abstractcore import build_effect_handlers

    executor = KeywordOnlyExecutor()
    llm = RemoteAbstractCoreLLMClient(server_base_url="http://llm.invalid", model="m",
                                      request_sender=RecordingSender(CHAT_REPLY))
    rt = Runtime(run_store=InMemoryRunStore(), ledger_store=InMemoryLedgerStore(),
                 effect_handlers=build_effect_handlers(llm=llm, tools=executor))
    calls = [{"name": "add", "arguments": {"a": 1}, "call_id": "c1"}]
    wf = one_effect(Effect(EffectType.TOOL_CALLS, {"tool_calls": calls}, result_key="r"), workflow_id="kw-tools")
    state = rt.tick(workflow=wf, run_id=rt.start(workflow=wf))
    assert state.status == RunStatus.COMPLETED, state.error
    assert executor.seen == [calls] and state.output["r"]["results"][0]["output"] == "done"


def test_normalize_local_response_reads_abstractcores_response():
    from abstractcore.core.types import GenerateResponse

    from runtime.integrations.abstractcore.llm_client import _normalize_local_response

    out = _normalize_local_response(GenerateResponse(
        content="hi", model="m", finish_reason="stop", usage={"total_tokens": 3},
        metadata={"trace_id": "tr_123", "_provider_request": {"payload": "the whole prompt"}},
        tool_calls=[{"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}]))
    assert set(out) == {"content", "data", "tool_calls", "usage", "model", "finish_reason", "metadata", "trace_id"}
    assert out["trace_id"] == "tr_123" and out["metadata"] == {"trace_id": "tr_123"}
    assert out["tool_calls"] == [{"name": "add", "arguments": {"a": 1}, "call_id": "c1"}]
    assert (out["content"], out["model"], out["usage"]) == ("hi", "m", {"total_tokens": 3})


def test_the_local_client_traces_each_call_with_the_runs_ids(fake):
    llm = LocalAbstractCoreLLMClient(provider="openai-compatible", model="gpt-4o-mini",
                                     llm_kwargs={"base_url": fake.base_url, "api_key": "", "timeout": 30})
    result = llm.generate(prompt="hi", params={"trace_metadata": {"run_id": "r-9", "session_id": "s-1"}})
    assert result["content"] == "echo: hi" and result["trace_id"]
    trace = llm._llm(fake.base_url).get_traces(result["trace_id"])
    assert trace["metadata"] == {"run_id": "r-9", "session_id": "s-1"}
    assert "trace_metadata" not in fake.requests[-1]["body"]  # kept by AbstractCore, not sent upstream


def test_the_local_runtime_takes_the_models_capabilities_into_its_limits(fake):
    from runtime import RuntimeConfig

    rt = create_local_runtime(provider="openai-compatible", model="gpt-4o-mini", tool_executor=TOOLS,
                              llm_kwargs={"base_url": fake.base_url, "api_key": "", "timeout": 30})
    assert rt.config.model_capabilities["max_tokens"] == 128000  # AbstractCore's table for gpt-4o-mini
    wf = one_effect(Effect(EffectType.LLM_CALL, {"prompt": "hi"}, result_key="r"), workflow_id="caps")
    assert rt.get_state(rt.start(workflow=wf)).vars["_limits"]["max_tokens"] == 128000
    # Capabilities given in the config win over the table.
    mine = create_local_runtime(provider="openai-compatible", model="gpt-4o-mini", tool_executor=TOOLS,
                                config=RuntimeConfig(model_capabilities={"max_tokens": 1000}))
    assert mine.config.model_capabilities["max_tokens"] == 1000
    assert mine.config.model_capabilities["tool_support"] == "native"


def test_bad_input_is_a_named_failure_in_the_ledger(fake, no_sleep):
    from runtime import Effect, InMemoryLedgerStore, InMemoryRunStore, Runtime
    from runtime.integrations.abstractcore import build_effect_handlers

    def runtime_for(url: str) -> Runtime:
        llm = RemoteAbstractCoreLLMClient(server_base_url=url, model="gpt-4o-mini", timeout_s=5)
        return Runtime(run_store=InMemoryRunStore(), ledger_store=InMemoryLedgerStore(),
                       effect_handlers=build_effect_handlers(llm=llm, tools=TOOLS),
                       effect_policy=RetryPolicy(llm_max_attempts=3, tool_max_attempts=2, backoff_base=0))

    cases = [
        (fake.base_url, Effect(EffectType.LLM_CALL, {"params": {}}), 1,
         "llm_call requires payload.prompt or payload.messages"),
        (fake.base_url, Effect(EffectType.TOOL_CALLS, {"tool_calls": "add"}), 1,
         "tool_calls requires payload.tool_calls (list)"),
        (f"http://127.0.0.1:{free_port()}", Effect(EffectType.LLM_CALL, {"prompt": "hi"}), 3, "cannot reach"),
        (fake.base_url, Effect(EffectType.LLM_CALL, {"prompt": "notjson"}), 1, "not an OpenAI chat completion"),
        (fake.base_url, Effect(EffectType.LLM_CALL, {"prompt": "fail400"}), 1, "HTTP 400"),
    ]
    for url, effect, attempts, words in cases:
        rt = runtime_for(url)
        wf = one_effect(effect, workflow_id=f"bad-{uuid.uuid4().hex[:6]}")
        run_id = rt.start(workflow=wf, vars={"keep": "me"})
        state = rt.tick(workflow=wf, run_id=run_id)
        assert state.status == RunStatus.FAILED and words in state.error, (words, state.error)
        assert state.error.startswith(f"Effect failed after {attempts} attempts"), state.error
        assert state.vars["keep"] == "me" and state.current_node == "act"
        failed = [r for r in rt.get_ledger(run_id) if r["status"] == "failed"]
        assert len(failed) == attempts and all(words in r["error"] for r in failed)
    # An unknown tool is not a failed effect: the agent reads the error of that one call.
    rt = runtime_for(fake.base_url)
    wf = one_effect(Effect(EffectType.TOOL_CALLS, {"tool_calls": [{"name": "nope", "arguments": {}}]},
                           result_key="r"), workflow_id="unknown-tool")
    state = rt.tick(workflow=wf, run_id=rt.start(workflow=wf))
    assert state.output["r"]["results"][0]["error"] == "Tool 'nope' not found"


def test_the_hosts_logging_survives_the_local_client(fake, tmp_path):
    """A worker's log handlers are intact after AbstractCore is first imported and used."""
    code = f"""
import logging, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
handler = logging.FileHandler({str(tmp_path / 'host.log')!r})
logging.basicConfig(level=logging.INFO, handlers=[handler])
from runtime.integrations.abstractcore import LocalAbstractCoreLLMClient
llm = LocalAbstractCoreLLMClient(provider="openai-compatible", model="gpt-4o-mini",
                                 llm_kwargs={{"base_url": {fake.base_url!r}, "api_key": "", "timeout": 30}})
print(llm.generate(prompt="hello")["content"])
root = logging.getLogger()
assert root.handlers == [handler], root.handlers
assert root.level == logging.INFO
logging.getLogger("host").info("still here")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("echo: hello")
    assert "still here" in (tmp_path / "host.log").read_text()
    assert "sys.modules" not in proc.stderr


def test_without_abstractcore_the_local_mode_names_the_extra(tmp_path):
    code = """
import sys
sys.modules['abstractcore'] = None   # as if it were not installed
from runtime.integrations.abstractcore import LocalAbstractCoreLLMClient, AbstractCoreMissing
try:
    LocalAbstractCoreLLMClient(provider="openai-compatible", model="m").generate(prompt="hi")
except AbstractCoreMissing as exc:
    print(exc)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install 'abstractruntime-celery[abstractcore]'" in proc.stdout, proc.stderr


# -- on Celery workers -----------------------------------------------------------------------------


def _group(redis_server, folder: Path, mode: str, fake, ac_server) -> WorkerGroup:
    g = WorkerGroup(redis_server.url, folder, tick_lease_s=3, effect_lease_s=3, sweep_period_s=0.5)
    g.env.update({"ABSTRACTRUNTIME_IMPORTS": "support.celery_scenarios,support.agent_scenarios", "AGENT_MODE": mode,
                  "FAKE_OPENAI_URL": fake.base_url, "AC_SERVER_URL": ac_server, "AC_TOKEN": TOKEN})
    return g


def celery_drive(client, vars: dict, *, tool_results=None):
    run_id = client.start("react", vars=vars)
    state = client.wait_for(run_id, timeout=60)
    assert state.status == RunStatus.WAITING and state.waiting.prompt == "Run add, shout?", (state.status, state.error)
    client.respond(run_id, "yes")
    state = client.wait_for(run_id, ["waiting", "completed", "failed"], timeout=60)
    if state.status == RunStatus.WAITING:
        assert tool_results is not None and state.waiting.details["mode"] == "passthrough"
        calls = state.waiting.details["tool_calls"]
        client.resume(run_id, wait_key=state.waiting.wait_key,
                      payload={"mode": "executed", "results": tool_results(calls)})
        state = client.wait_for(run_id, ["completed", "failed"], timeout=60)
    return state, client.get_ledger(run_id)


@pytest.mark.parametrize("mode", ["local", "remote", "hybrid"])
def test_the_agent_on_celery_workers(redis_server, tmp_path, fake, ac_server, mode):
    g = _group(redis_server, tmp_path / mode, mode, fake, ac_server)
    try:
        g.start_worker("w", pool="solo")
        client = g.client()
        state, ledger = celery_drive(client, {"question": "what is 2 + 3?"}, tool_results=host_runs)
        assert state.status == RunStatus.COMPLETED, state.error
        assert state.output == {"answer": EXPECTED_ANSWER}
        shape = [(r["node_id"], r["status"]) for r in ledger if not delivery_records([r])]
        assert shape == ([*SHAPE[:5], ("act", "waiting"), *SHAPE[6:]] if mode == "remote" else SHAPE)
        # each delivery is a record of its own: the person's answer, and the host's tool results
        assert [(t, r["node_id"]) for r in ledger for t, *_ in delivery_records([r])] == (
            [("wait_answer", "approve"), ("wait_resume", "act")] if mode == "remote" else [("wait_answer", "approve")])
        assert client.verify(state.run_id)["ok"]
        # The worker still logs after its first LLM call (in local mode AbstractCore was imported there).
        log = g.log("w")
        # One INFO line per transition ("effect.llm run=... -> next"); Celery's own task lines
        # ("Task abstractruntime.effect.llm[...] succeeded") count too.
        first_llm = re.search(r"effect\.llm[\[ ]", log)
        assert first_llm, log[-2000:]
        assert re.search(r"INFO.*\btick[\[ ]", log[first_llm.end():]), log[-2000:]
    finally:
        g.close()


def test_a_worker_killed_after_the_answer_calls_the_llm_again_only_if_nothing_was_recorded(
        redis_server, tmp_path, fake, ac_server):
    g = _group(redis_server, tmp_path / "kill", "local", fake, ac_server)
    try:
        g.start_worker("w", pool="prefork", concurrency=1)
        g.start_beat()
        client = g.client()
        # Killed after the LLM answered, before the commit: nothing recorded, so it is called again.
        question = f"uncommitted {uuid.uuid4().hex[:6]}"
        state, ledger = celery_drive(client, {"question": question, "die_after_answer": str(tmp_path / "m1")},
                                     tool_results=host_runs)
        assert state.status == RunStatus.COMPLETED and (tmp_path / "m1").exists()
        assert fake.calls_with(question, asking=True) == 2  # the first answer was lost with the worker
        assert fake.calls_with(question) == 3  # and the follow-up turn with the tool results
        # Killed after the answer was committed (in the next node): the recorded result stands.
        question = f"committed {uuid.uuid4().hex[:6]}"
        state, ledger = celery_drive(client, {"question": question, "die_in_route": str(tmp_path / "m2")},
                                     tool_results=host_runs)
        assert state.status == RunStatus.COMPLETED and (tmp_path / "m2").exists()
        assert fake.calls_with(question, asking=True) == 1  # recorded before the kill: not asked again
        completed = [r["idempotency_key"] for r in ledger if r["status"] == "completed" and r["idempotency_key"]]
        assert len(completed) == len(set(completed))
    finally:
        g.close()

