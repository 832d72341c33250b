"""Workflows, tools and effect handlers that the Celery worker processes of the tests import.

Listed in ``ABSTRACTRUNTIME_IMPORTS`` for the workers the tests start, and imported by the
tests themselves, which run the same workflows in process to compare. Every handler is
deterministic: what an effect returns depends only on its input and its attempt number,
so both drivers must end with the same state and the same ledger.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from runtime import Effect, EffectType, RetryPolicy, StepPlan, WorkflowSpec
from runtime.models import EffectOutcome
from runtime.step import current_effect_call
from workers.registry import register_effect_handler, register_workflow, set_effect_policy, tool

from support.scenarios import chain, one_effect, tool_loop

#: Retries for LLM and tool effects, with a short backoff so the tests stay fast.
POLICY = RetryPolicy(llm_max_attempts=3, tool_max_attempts=3, backoff_base=0.05, backoff_max=0.2)
set_effect_policy(POLICY)


# -- tools and handlers ------------------------------------------------------------------------------

@tool
def add(a: int, b: int) -> int:
    return a + b


@tool
def echo(**kwargs: Any) -> Any:
    return kwargs


@tool
def explode(**kwargs: Any) -> Any:
    raise ValueError("the tool exploded")


def fake_llm(run: Any, effect: Effect) -> EffectOutcome:
    """An LLM that answers with its prompt reversed; a prompt starting with "flaky" fails its
    first attempt, "broken" fails every attempt, "raise" raises, "slow:N" takes N seconds, and
    "overlap:N" too, answering when it ran (``ran``: [start, end], epoch s)."""
    prompt = str(effect.payload.get("prompt", ""))
    call = current_effect_call.get()
    attempt = call.attempt if call is not None else 1
    if prompt.startswith("flaky") and attempt == 1:
        return EffectOutcome.failed("503 from the provider")
    if prompt.startswith("broken"):
        return EffectOutcome.failed(f"provider down (attempt {attempt})")
    if prompt.startswith("raise"):
        raise RuntimeError("the LLM client raised")
    if prompt.startswith("slow:"):
        time.sleep(float(prompt.split(":")[1]))
    if prompt.startswith("overlap:"):
        t0 = time.time()
        time.sleep(float(prompt.split(":")[1]))
        return EffectOutcome.completed({"content": prompt[::-1], "attempt": attempt, "ran": [t0, time.time()]})
    if prompt.startswith("die-once:"):
        die_once(prompt.split(":", 1)[1])
    if prompt.startswith("usage"):  # a provider that reports its token usage (flow control, metrics)
        return EffectOutcome.completed({"content": prompt[::-1], "attempt": attempt, "model": "fake-1",
                                        "usage": {"prompt_tokens": len(prompt), "completion_tokens": 7}})
    return EffectOutcome.completed({"content": prompt[::-1], "attempt": attempt})


register_effect_handler(EffectType.LLM_CALL, fake_llm)


# -- workflows ---------------------------------------------------------------------------------------

def _wf(spec: WorkflowSpec) -> WorkflowSpec:
    return register_workflow(spec, replace=True)


def _branch() -> WorkflowSpec:
    def decide(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="decide", next_node="big" if run.vars.get("x", 0) > 10 else "small")

    def big(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="big", complete_output={"path": "big"})

    def small(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="small", complete_output={"path": "small"})

    return WorkflowSpec(workflow_id="branch", entry_node="decide", nodes={"decide": decide, "big": big,
                                                                          "small": small})


def _llm(prompt: str, workflow_id: str) -> WorkflowSpec:
    return one_effect(Effect(type=EffectType.LLM_CALL, payload={"prompt": prompt}, result_key="llm"),
                      workflow_id=workflow_id)


def _tools(calls: list[dict[str, Any]], workflow_id: str) -> WorkflowSpec:
    return one_effect(Effect(type=EffectType.TOOL_CALLS, payload={"tool_calls": calls}, result_key="tools"),
                      workflow_id=workflow_id)


def _raises() -> WorkflowSpec:
    def boom(run: Any, ctx: Any) -> StepPlan:
        raise RuntimeError("node blew up")

    return WorkflowSpec(workflow_id="raises", entry_node="boom", nodes={"boom": boom})


def _agent() -> WorkflowSpec:
    """An LLM call, a tool call, a question to a person, then completion."""

    def think(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="think", effect=Effect(type=EffectType.LLM_CALL, payload={"prompt": "plan"},
                                                       result_key="plan"), next_node="act")

    def act(run: Any, ctx: Any) -> StepPlan:
        calls = [{"name": "add", "arguments": {"a": 2, "b": 3}, "call_id": "c1"}]
        return StepPlan(node_id="act", effect=Effect(type=EffectType.TOOL_CALLS, payload={"tool_calls": calls},
                                                     result_key="tools"), next_node="ask")

    def ask(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="ask", effect=Effect(type=EffectType.ASK_USER, payload={"prompt": "Ship it?",
                                                     "choices": ["yes", "no"]}, result_key="answer"),
                        next_node="done")

    def done(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="done", complete_output={"plan": run.vars["plan"], "sum":
                        run.vars["tools"]["results"][0]["output"], "answer": run.vars["answer"]})

    return WorkflowSpec(workflow_id="agent", entry_node="think",
                        nodes={"think": think, "act": act, "ask": ask, "done": done})


def _parent(workflow_id: str, child: str, *, is_async: bool = False) -> WorkflowSpec:
    payload: dict[str, Any] = {"workflow_id": child, "vars": {"from": "parent"}}
    if is_async:
        payload["async"] = True
    return one_effect(Effect(type=EffectType.START_SUBWORKFLOW, payload=payload, result_key="child"),
                      workflow_id=workflow_id)


def _nowhere() -> WorkflowSpec:
    return one_effect(Effect(type=EffectType.TOOL_CALLS, payload={"tool_calls": []}, result_key="t"),
                      workflow_id="nowhere", next_node=None)


WORKFLOWS = [
    _wf(chain(5)),
    _wf(chain(2000, workflow_id="chain2000")),
    _wf(_branch()),
    _wf(tool_loop(3, {"tool_calls": [{"name": "echo", "arguments": {"q": "x"}, "call_id": "1"}]},
                  workflow_id="tool_loop")),
    _wf(_tools([{"name": "add", "arguments": {"a": 1, "b": 2}, "call_id": "a"},
                {"name": "explode", "arguments": {}, "call_id": "b"},
                {"name": "missing", "arguments": {}, "call_id": "c"}], "tools")),
    _wf(_llm("hello", "llm")),
    _wf(one_effect(Effect(type=EffectType.LLM_CALL, payload={
        "prompt": "hello", "params": {"api_key": "sk-test-SECRET-4242", "temperature": 0}}, result_key="llm"),
        workflow_id="llm_with_key")),
    _wf(_llm("flaky hello", "llm_flaky")),
    _wf(_llm("broken", "llm_broken")),
    _wf(_llm("slow:1.5", "llm_slow")),
    _wf(_llm("slow:5", "llm_slow5")),
    _wf(_llm("overlap:1.5", "llm_overlap")),
    _wf(_llm("raise", "llm_raises")),
    _wf(_llm("usage: twelve tokens", "llm_usage")),
    _wf(one_effect(Effect(type=EffectType.ASK_USER, payload={"prompt": "Go?", "choices": ["y", "n"]},
                          result_key="answer"), workflow_id="ask")),
    _wf(one_effect(Effect(type=EffectType.ASK_USER, payload={}), workflow_id="ask_no_prompt")),
    _wf(one_effect(Effect(type=EffectType.WAIT_EVENT, payload={"wait_key": "evt:go"}, result_key="evt"),
                   workflow_id="wait_event")),
    _wf(one_effect(Effect(type=EffectType.WAIT_EVENT, payload={}), workflow_id="wait_event_no_key")),
    _wf(one_effect(Effect(type=EffectType.WAIT_UNTIL, payload={"until": "2020-01-01T00:00:00Z"},
                          result_key="t"), workflow_id="wait_past")),
    _wf(_raises()),
    _wf(_agent()),
    _wf(_nowhere()),
    _wf(chain(3, workflow_id="child")),
    _wf(_raises()),
    _wf(one_effect(Effect(type=EffectType.ASK_USER, payload={"prompt": "child asks"}, result_key="a"),
                   workflow_id="child_asks")),
    _wf(_parent("parent_sync", "child")),
    _wf(_parent("parent_async", "child", is_async=True)),
    _wf(_parent("parent_of_failing", "raises")),
    _wf(_parent("parent_of_asking", "child_asks")),
    _wf(_parent("grandparent", "parent_of_asking")),
    _wf(_parent("parent_unknown_child", "no_such_workflow")),
]


def _sleep_until() -> WorkflowSpec:
    """Waits until ``vars["until"]``, then completes with the time it woke (by the worker clock)."""

    def sleep(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="sleep", effect=Effect(type=EffectType.WAIT_UNTIL,
                                                       payload={"until": run.vars["until"]}), next_node="up")

    def up(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="up", complete_output={"woke_at": time.time()})

    return WorkflowSpec(workflow_id="sleep_until", entry_node="sleep", nodes={"sleep": sleep, "up": up})


WORKFLOWS.append(_wf(_sleep_until()))


def die_once(marker: str) -> None:
    """SIGKILL this process unless ``marker`` exists (it is created first, so the retry lives)."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)


def _crashy() -> WorkflowSpec:
    """Two nodes, an LLM call and completion; ``vars["die_tick"]`` / ``vars["die_effect"]`` name
    marker files: the worker is killed inside node n1, or inside the LLM call, once."""

    def n0(run: Any, ctx: Any) -> StepPlan:
        run.vars["visited"] = run.vars.get("visited", 0) + 1
        return StepPlan(node_id="n0", next_node="n1")

    def n1(run: Any, ctx: Any) -> StepPlan:
        if run.vars.get("die_tick"):
            die_once(run.vars["die_tick"])
        run.vars["visited"] = run.vars.get("visited", 0) + 1
        return StepPlan(node_id="n1", next_node="n2")

    def n2(run: Any, ctx: Any) -> StepPlan:
        marker = run.vars.get("die_effect")
        prompt = f"die-once:{marker}" if marker else "hello"
        return StepPlan(node_id="n2", effect=Effect(type=EffectType.LLM_CALL, payload={"prompt": prompt},
                                                    result_key="llm"), next_node="n3")

    def n3(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="n3", complete_output={"visited": run.vars["visited"], "llm": run.vars["llm"]})

    return WorkflowSpec(workflow_id="crashy", entry_node="n0", nodes={"n0": n0, "n1": n1, "n2": n2, "n3": n3})


WORKFLOWS.append(_wf(_crashy()))


def _bad_vars() -> WorkflowSpec:
    def bad(run: Any, ctx: Any) -> StepPlan:
        run.vars["tags"] = {"a", "b"}  # a set: not JSON, the store refuses it
        return StepPlan(node_id="bad", next_node="never")

    return WorkflowSpec(workflow_id="bad_vars", entry_node="bad", nodes={"bad": bad})


@tool
def huge(n: int) -> str:
    return "x" * n


WORKFLOWS.append(_wf(_bad_vars()))
WORKFLOWS.append(_wf(_tools([{"name": "huge", "arguments": {"n": 2_000_000}, "call_id": "h"}], "huge_result")))


# -- retry of a failed run (issue 13) ------------------------------------------------------------------

@tool
def count_call(path: str, node: str) -> int:
    """Appends ``node`` to the file at ``path`` (visible across worker processes); the calls so far."""
    with open(path, "a") as f:
        f.write(node + "\n")
    with open(path) as f:
        return len(f.read().splitlines())


def _fix_me() -> WorkflowSpec:
    """Five nodes: a1 and a2 call ``count_call`` (file ``vars["counter"]``); a3 raises until the
    file ``vars["fixed"]`` exists (the operator's "deployed fix"); a4 and a5 finish."""

    def counted(node: str, next_node: str) -> Any:
        def handler(run: Any, ctx: Any) -> StepPlan:
            call = {"name": "count_call", "arguments": {"path": run.vars["counter"], "node": node}, "call_id": node}
            return StepPlan(node_id=node, effect=Effect(type=EffectType.TOOL_CALLS, payload={"tool_calls": [call]},
                                                        result_key=f"calls.{node}"), next_node=next_node)
        return handler

    def a3(run: Any, ctx: Any) -> StepPlan:
        if not os.path.exists(run.vars["fixed"]):
            raise RuntimeError("a3 is broken until the fix is deployed")
        return StepPlan(node_id="a3", next_node="a4")

    def a4(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="a4", next_node="a5")

    def a5(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="a5", complete_output={"calls": run.vars["calls"]})

    return WorkflowSpec(workflow_id="fix_me", entry_node="a1", nodes={
        "a1": counted("a1", "a2"), "a2": counted("a2", "a3"), "a3": a3, "a4": a4, "a5": a5})


def _parent_of_fix_me() -> WorkflowSpec:
    """Starts ``fix_me`` as a sync child with its own files, then completes with its output."""

    def start(run: Any, ctx: Any) -> StepPlan:
        child_vars = {"counter": run.vars["counter"], "fixed": run.vars["fixed"]}
        return StepPlan(node_id="start", effect=Effect(type=EffectType.START_SUBWORKFLOW, payload={
            "workflow_id": "fix_me", "vars": child_vars}, result_key="child"), next_node="done")

    def done(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="done", complete_output={"child": run.vars["child"]})

    return WorkflowSpec(workflow_id="parent_of_fix_me", entry_node="start", nodes={"start": start, "done": done})


WORKFLOWS.append(_wf(_fix_me()))
WORKFLOWS.append(_wf(_parent_of_fix_me()))


# -- a poison run (issue 13 item 7) --------------------------------------------------------------------

def _poison() -> WorkflowSpec:
    """start -> crash -> done: ``crash`` ends the worker process (``os._exit(1)``) while the
    file ``vars["fixed"]`` is missing, when that var is given (the stub tests lose its ticks)."""

    def start(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="start", next_node="crash")

    def crash(run: Any, ctx: Any) -> StepPlan:
        fixed = run.vars.get("fixed")
        if fixed and not os.path.exists(fixed):
            os._exit(1)
        return StepPlan(node_id="crash", next_node="done")

    def done(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="done", complete_output={"survived": True})

    return WorkflowSpec(workflow_id="poison", entry_node="start", nodes={"start": start, "crash": crash, "done": done})


WORKFLOWS.append(_wf(_poison()))


# -- the fault table and retry under a crash (issue 13 acceptance) ---------------------------------------

def _retry_of(effect: Effect) -> dict[str, Any] | None:
    retry = effect.payload.get("retry") if isinstance(effect.payload, dict) else None
    return retry if isinstance(retry, dict) else None


class _PayloadRetryPolicy:
    """:data:`POLICY`, except for an effect whose payload carries ``retry``:
    ``{"max_attempts": N, "backoff_s": [after attempt 1, after attempt 2, ...]}`` (the last
    value repeats), so that one test can see a backoff long enough to look at."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def max_attempts(self, effect: Effect) -> int:
        retry = _retry_of(effect)
        return int(retry["max_attempts"]) if retry else int(self.base.max_attempts(effect))

    def backoff_seconds(self, *, effect: Effect, attempt: int) -> float:
        retry = _retry_of(effect)
        if not retry:
            return float(self.base.backoff_seconds(effect=effect, attempt=attempt))
        steps = list(retry["backoff_s"])
        return float(steps[min(max(attempt, 1), len(steps)) - 1])

    def idempotency_key(self, *, run: Any, node_id: str, effect: Effect) -> str:
        return str(self.base.idempotency_key(run=run, node_id=node_id, effect=effect))


set_effect_policy(_PayloadRetryPolicy(POLICY))


def _tool_calls_failing_for_retry() -> Any:
    """The TOOL_CALLS handler workers use anyway (the registered tools), except that in an
    effect whose payload carries ``retry`` a failed call fails the effect (a retryable
    failure), where normally a tool's error is data for the agent."""
    from runtime.integrations.abstractcore import make_tool_calls_handler
    from workers.registry import registry

    plain = make_tool_calls_handler(tools=registry.live_tools())

    def handle(run: Any, effect: Effect, default_next_node: str | None) -> EffectOutcome:
        outcome = plain(run, effect, default_next_node)
        if _retry_of(effect) and outcome.status == "completed":
            for result in (outcome.result or {}).get("results", []):
                if not result.get("success"):
                    return EffectOutcome.failed(f"{result.get('name')}: {result.get('error')}")
        return outcome

    return handle


register_effect_handler(EffectType.TOOL_CALLS, _tool_calls_failing_for_retry())


@tool
def fail_until_fixed(path: str, fixed: str) -> int:
    """Appends a line to ``path`` per call; raises TimeoutError while the file ``fixed`` is
    missing, then takes as many seconds as that file says (none if empty) and succeeds."""
    with open(path, "a") as f:
        f.write("call\n")
    if not os.path.exists(fixed):
        raise TimeoutError("the service timed out")
    with open(fixed) as f:
        time.sleep(float(f.read().strip() or 0))
    with open(path) as f:
        return len(f.read().splitlines())


@tool
def slow_once(path: str, node: str, started: str, seconds: float) -> str:
    """Appends ``node`` to ``path``; the first call (no file ``started`` yet) creates that file
    and then sleeps ``seconds`` (long enough for a test to kill the worker running it)."""
    with open(path, "a") as f:
        f.write(node + "\n")
    if not os.path.exists(started):
        open(started, "w").close()
        time.sleep(seconds)
    return node


def _wait_on_key() -> WorkflowSpec:
    """Waits for the event named by ``vars["key"]``, then completes with its payload."""

    def wait(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="wait", effect=Effect(type=EffectType.WAIT_EVENT, payload={"wait_key": run.vars["key"]},
                                                      result_key="evt"), next_node="done")

    def done(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="done", complete_output={"evt": run.vars["evt"]})

    return WorkflowSpec(workflow_id="wait_on_key", entry_node="wait", nodes={"wait": wait, "done": done})


def _tool_retry() -> WorkflowSpec:
    """One call of ``fail_until_fixed`` (files ``vars["counter"]``, ``vars["fixed"]``), retried
    up to 5 attempts: 0.2 s after the first failure, ``vars["backoff_s"]`` (6) after later ones."""

    def call(run: Any, ctx: Any) -> StepPlan:
        backoff = float(run.vars.get("backoff_s", 6))
        calls = [{"name": "fail_until_fixed", "arguments": {"path": run.vars["counter"], "fixed": run.vars["fixed"]},
                  "call_id": "f"}]
        return StepPlan(node_id="call", effect=Effect(type=EffectType.TOOL_CALLS, payload={
            "tool_calls": calls, "retry": {"max_attempts": 5, "backoff_s": [0.2, backoff]}}, result_key="tools"),
            next_node="done")

    def done(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="done", complete_output={"calls": run.vars["tools"]["results"][0]["output"]})

    return WorkflowSpec(workflow_id="tool_retry", entry_node="call", nodes={"call": call, "done": done})


def _slow_call(node: str, next_node: str) -> Any:
    """A node calling ``slow_once`` with the run's files (``counter``, ``started``, ``seconds``)."""

    def handler(run: Any, ctx: Any) -> StepPlan:
        args = {"path": run.vars["counter"], "node": node, "started": run.vars["started"],
                "seconds": float(run.vars.get("seconds", 60))}
        return StepPlan(node_id=node, effect=Effect(type=EffectType.TOOL_CALLS, payload={"tool_calls": [
            {"name": "slow_once", "arguments": args, "call_id": node}]}, result_key=f"slow.{node}"),
            next_node=next_node)

    return handler


def _slow_tool_once() -> WorkflowSpec:
    """``work`` calls ``slow_once`` (slow the first time only), then ``done`` completes."""

    def done(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="done", complete_output={"slow": run.vars["slow"]})

    return WorkflowSpec(workflow_id="slow_tool_once", entry_node="work",
                        nodes={"work": _slow_call("work", "done"), "done": done})


def _fix_me_then_slow() -> WorkflowSpec:
    """``fix_me`` with a slow step after the broken one: a1 and a2 call ``count_call``, a3
    raises until the file ``vars["fixed"]`` exists, a4 calls ``slow_once`` (all three tools
    write to ``vars["counter"]``), a5 completes."""
    base = _fix_me()
    nodes = dict(base.nodes)

    def a5(run: Any, ctx: Any) -> StepPlan:
        return StepPlan(node_id="a5", complete_output={"calls": run.vars["calls"], "slow": run.vars["slow"]})

    nodes.update(a4=_slow_call("a4", "a5"), a5=a5)
    return WorkflowSpec(workflow_id="fix_me_then_slow", entry_node="a1", nodes=nodes)


WORKFLOWS.append(_wf(_wait_on_key()))
WORKFLOWS.append(_wf(_tool_retry()))
WORKFLOWS.append(_wf(_slow_tool_once()))
WORKFLOWS.append(_wf(_fix_me_then_slow()))


def _leaky() -> WorkflowSpec:
    """Node ``leak`` logs the values of ``OPENAI_API_KEY`` and ``ABSTRACTRUNTIME_SLA_WEBHOOK_SECRET``
    (a careless node) and raises with one in its message: the log-redaction test's run."""
    import logging
    import os

    def leak(run: Any, ctx: Any) -> StepPlan:
        key, secret = os.environ.get("OPENAI_API_KEY", ""), os.environ.get("ABSTRACTRUNTIME_SLA_WEBHOOK_SECRET", "")
        logging.getLogger("user.node").warning("calling the model with key %s (webhook secret %s)", key, secret)
        raise RuntimeError(f"bad credentials: {key}")

    return WorkflowSpec(workflow_id="leaky", entry_node="leak", nodes={"leak": leak})


WORKFLOWS.append(_wf(_leaky()))
