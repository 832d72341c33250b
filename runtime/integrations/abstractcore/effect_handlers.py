"""The LLM_CALL and TOOL_CALLS effect handlers, over an LLM client and a tool executor.

``LLM_CALL`` needs ``payload.prompt`` or ``payload.messages``; it may carry
``system_prompt``, ``tools`` (schemas) and ``params``; the run's trace context (run, actor,
session, parent run) is added to the params. The result is the client's eight-key dict; its
token usage is added to ``vars["_limits"]["estimated_tokens_used"]``, so the limits API works
on real usage. A failure is a failed attempt, retried by the effect policy unless the client
says another attempt cannot help (an HTTP 4xx).

``TOOL_CALLS`` needs ``payload.tool_calls`` (a list); an executor result whose ``mode`` is
anything but ``executed`` parks the run (reason event, wait key ``tool_calls:{run}:{node}``
unless ``payload.wait_key``), with the mode and the calls in the wait details.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ...artifacts import artifact_ref
from ...models import Effect, EffectOutcome, EffectType, RunState, WaitReason, WaitState
from ...step import EffectHandler
from .llm_client import LLMCallError, LLMClient
from .tool_executor import ToolExecutor

__all__ = ["make_llm_call_handler", "make_tool_calls_handler", "build_effect_handlers"]


def _add_usage(run: RunState, usage: Any) -> None:
    if not isinstance(usage, Mapping):
        return
    total = usage.get("total_tokens")
    if not isinstance(total, int):
        total = sum(v for k, v in usage.items() if k in ("prompt_tokens", "completion_tokens", "input_tokens",
                                                         "output_tokens") and isinstance(v, int))
    limits = run.vars.get("_limits")
    if isinstance(limits, dict) and total:
        limits["estimated_tokens_used"] = int(limits.get("estimated_tokens_used") or 0) + total


class _Offload:
    """Results larger than ``max_inline_bytes`` (compact JSON) go to ``store``; the run keeps
    ``{"$artifact": id}`` (``store.load_json(get_artifact_id(ref))`` reads it back)."""

    def __init__(self, store: Any, max_inline_bytes: int | None) -> None:
        if store is not None and (max_inline_bytes is None or max_inline_bytes < 0):
            raise ValueError("an artifact store needs max_inline_bytes, a size of 0 or more")
        self.store, self.max_inline_bytes = store, max_inline_bytes

    def __call__(self, run: RunState, result: Any, kind: str) -> Any:
        if self.store is None or self.max_inline_bytes is None:
            return result
        size = len(json.dumps(result, separators=(",", ":"), ensure_ascii=False, default=str).encode())
        if size <= self.max_inline_bytes:
            return result
        meta = self.store.store_json(result, run_id=run.run_id, tags={"kind": kind})
        return artifact_ref(meta.artifact_id)


def make_llm_call_handler(*, llm: LLMClient, artifact_store: Any = None,
                          max_inline_bytes: int | None = None) -> EffectHandler:
    def handle(run: RunState, effect: Effect, default_next_node: str | None) -> EffectOutcome:
        payload = effect.payload
        prompt, messages = payload.get("prompt"), payload.get("messages")
        if not prompt and not messages:
            return EffectOutcome.failed("llm_call requires payload.prompt or payload.messages", retryable=False)
        params = dict(payload.get("params") or {})
        trace = dict(params.get("trace_metadata") or {})
        trace["run_id"] = run.run_id
        for key, value in (("actor_id", run.actor_id), ("session_id", run.session_id),
                           ("parent_run_id", run.parent_run_id)):
            if value is not None:
                trace[key] = value
        params["trace_metadata"] = trace
        try:
            result = llm.generate(prompt=prompt, messages=messages, system_prompt=payload.get("system_prompt"),
                                  tools=payload.get("tools"), params=params)
        except LLMCallError as exc:
            return EffectOutcome.failed(str(exc), retryable=exc.retryable)
        _add_usage(run, result.get("usage"))
        return EffectOutcome.completed(offload(run, result, "llm_result"))

    offload = _Offload(artifact_store, max_inline_bytes)
    return handle


def make_tool_calls_handler(*, tools: ToolExecutor | None, artifact_store: Any = None,
                            max_inline_bytes: int | None = None) -> EffectHandler:
    def handle(run: RunState, effect: Effect, default_next_node: str | None) -> EffectOutcome:
        payload = effect.payload
        calls = payload.get("tool_calls")
        if not isinstance(calls, list):
            return EffectOutcome.failed("tool_calls requires payload.tool_calls (list)", retryable=False)
        if tools is None:
            return EffectOutcome.failed("TOOL_CALLS requires a ToolExecutor; none is configured", retryable=False)
        # By keyword, as 0.2.0 calls it: an executor may declare ``execute(self, *, tool_calls)``.
        result = tools.execute(tool_calls=calls)
        mode = result.get("mode")
        if mode is not None and mode != "executed":
            return EffectOutcome.waiting(WaitState(
                reason=WaitReason.EVENT,
                wait_key=str(payload.get("wait_key") or f"tool_calls:{run.run_id}:{run.current_node}"),
                resume_to_node=payload.get("resume_to_node") or default_next_node,
                result_key=effect.result_key,
                details={"mode": mode, "tool_calls": result.get("tool_calls", calls)},
            ))
        return EffectOutcome.completed(offload(run, result, "tool_results"))

    offload = _Offload(artifact_store, max_inline_bytes)
    return handle


def build_effect_handlers(*, llm: LLMClient, tools: ToolExecutor | None = None, artifact_store: Any = None,
                          max_inline_bytes: int | None = None) -> dict[EffectType, EffectHandler]:
    """Handlers for LLM_CALL and TOOL_CALLS, to pass as ``Runtime(effect_handlers=...)``.

    With ``artifact_store``, results larger than ``max_inline_bytes`` are stored there and the
    run keeps the reference, so that run state stays small.
    """
    return {
        EffectType.LLM_CALL: make_llm_call_handler(llm=llm, artifact_store=artifact_store,
                                                   max_inline_bytes=max_inline_bytes),
        EffectType.TOOL_CALLS: make_tool_calls_handler(tools=tools, artifact_store=artifact_store,
                                                       max_inline_bytes=max_inline_bytes),
    }
