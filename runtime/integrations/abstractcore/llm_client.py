"""LLM clients: AbstractCore in this process, or an AbstractCore server over HTTP.

Both return the same JSON dict of eight keys (``content``, ``data``, ``tool_calls``,
``usage``, ``model``, ``finish_reason``, ``metadata``, ``trace_id``) and raise
:class:`LLMCallError` on failure, saying whether another attempt may help. Retries are the
runtime's (the effect policy, each attempt in the ledger), never the provider's.

The remote client uses the standard library only; the local one imports ``abstractcore``
on first use, keeping the host's root logging configuration (``import abstractcore``
replaces the root logger's handlers).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from ...errors import AbstractRuntimeError, EffectError
from ...outbound import outbound_headers
from .request_sender import HttpResponse, HttpStatusError, RequestSender, UrllibRequestSender, mask_url
from .tool_schema import tool_schema

__all__ = [
    "LLMClient",
    "AbstractCoreLLMClient",
    "LLMCallError",
    "AbstractCoreMissing",
    "RemoteAbstractCoreLLMClient",
    "LocalAbstractCoreLLMClient",
    "normalize_result",
    "import_abstractcore",
    "tool_schema",
    # The remote client's transport (defined in .request_sender; 0.2.0 code imports them from here)
    "HttpResponse",
    "HttpStatusError",
    "RequestSender",
    "UrllibRequestSender",
]

#: Keys of ``params`` that describe the run (sent as headers), not the generation.
TRACE_KEYS = ("run_id", "actor_id", "session_id", "parent_run_id")
#: Generation parameters passed on to the provider when present.
GENERATION_KEYS = ("temperature", "max_tokens", "max_output_tokens", "top_p", "seed", "stop",
                   "frequency_penalty", "presence_penalty")


class LLMCallError(EffectError):
    """An LLM call failed; ``retryable`` is False when another attempt cannot help (HTTP 4xx)."""

    def __init__(self, message: str, *, retryable: bool = True, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


class AbstractCoreMissing(AbstractRuntimeError, ImportError):
    """The local mode needs the ``abstractcore`` package."""

    def __init__(self) -> None:
        super().__init__("The local LLM client needs AbstractCore: pip install 'abstractruntime-celery[abstractcore]' "
                         "(or use the remote client, which needs no extra package)")


@runtime_checkable
class LLMClient(Protocol):
    def generate(self, *, prompt: str | None = None, messages: Sequence[Mapping[str, Any]] | None = None,
                 system_prompt: str | None = None, tools: Sequence[Any] | None = None,
                 params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One completion as the eight-key JSON dict; :class:`LLMCallError` on failure."""


#: The name AbstractRuntime 0.2.0 gives the client protocol.
AbstractCoreLLMClient = LLMClient


def normalize_result(*, content: Any = None, data: Any = None, tool_calls: Any = None, usage: Any = None,
                     model: Any = None, finish_reason: Any = None, metadata: Any = None,
                     trace_id: Any = None) -> dict[str, Any]:
    """The eight-key result, JSON-safe (values that are not JSON become their text)."""
    def safe(value: Any) -> Any:
        try:
            return json.loads(json.dumps(value, default=str))
        except (TypeError, ValueError):
            return str(value)

    calls = []
    for call in tool_calls or []:
        # Our shape, an OpenAI one ({"id", "function": {"name", "arguments"}}: AbstractCore passes those
        # through when the model calls a tool it was not offered), or AbstractCore's ToolCall object.
        if not isinstance(call, Mapping):
            call = {k: getattr(call, k, None) for k in ("name", "arguments", "call_id")}
        function = call.get("function") if isinstance(call.get("function"), Mapping) else {}
        args = call.get("arguments", function.get("arguments"))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                pass
        call_id = call.get("call_id", call.get("id"))
        calls.append({"name": call.get("name") or function.get("name"),
                      "arguments": safe(args if args is not None else {}),
                      "call_id": None if call_id is None else str(call_id)})
    return {"content": content, "data": safe(data), "tool_calls": calls or None, "usage": safe(usage),
            "model": model, "finish_reason": finish_reason, "metadata": safe(metadata or {}), "trace_id": trace_id}


def _normalize_local_response(resp: Any) -> dict[str, Any]:
    """The eight-key result from what AbstractCore's ``generate`` returned (a ``GenerateResponse``,
    a dict, or a pydantic model for structured output, which becomes ``data``).

    ``trace_id`` comes from the response's ``metadata`` (AbstractCore puts it there when tracing
    is on). Metadata keys starting with ``_`` are AbstractCore's own diagnostics (the whole
    provider request among them) and are left out, so the ledger does not hold every prompt twice.
    """
    if isinstance(resp, Mapping):
        fields = dict(resp)
    elif callable(getattr(resp, "model_dump", None)) and not hasattr(resp, "content"):
        return normalize_result(data=resp.model_dump())
    else:
        fields = {k: getattr(resp, k, None) for k in ("content", "data", "tool_calls", "usage", "model",
                                                      "finish_reason", "metadata", "trace_id")}
    raw_meta = fields.get("metadata")
    metadata = {}
    if isinstance(raw_meta, Mapping):
        metadata = {k: v for k, v in raw_meta.items() if not str(k).startswith("_")}
    trace_id = fields.get("trace_id") or metadata.get("trace_id")
    return normalize_result(content=fields.get("content"), data=fields.get("data"), tool_calls=fields.get("tool_calls"),
                            usage=fields.get("usage"), model=fields.get("model"),
                            finish_reason=fields.get("finish_reason"), metadata=metadata,
                            trace_id=None if trace_id is None else str(trace_id))


def _trace(params: dict[str, Any]) -> dict[str, Any]:
    """Take the run's trace context out of ``params``: ``params["trace_metadata"]`` (a dict),
    and run/actor/session/parent ids given as plain keys."""
    trace = params.pop("trace_metadata", None)
    trace = dict(trace) if isinstance(trace, Mapping) else {}
    for key in TRACE_KEYS:
        value = params.pop(key, None)
        if value is not None:
            trace.setdefault(key, value)
    return trace


def _messages(prompt: str | None, messages: Sequence[Mapping[str, Any]] | None,
              system_prompt: str | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if system_prompt:
        out.append({"role": "system", "content": system_prompt})
    out += [dict(m) for m in messages or []]
    if prompt:
        out.append({"role": "user", "content": prompt})
    return out


class RemoteAbstractCoreLLMClient:
    """POSTs OpenAI-shaped chat requests to an AbstractCore server (``/v1/chat/completions``).

    ``model`` is ``provider/model`` as the server expects (``openai-compatible/gpt-4o-mini``);
    ``params["base_url"]`` routes one request to another upstream. The run's trace context
    (run, actor, session, parent run) goes in headers. ``request_sender`` sends the request
    (see :mod:`.request_sender`; the standard library's by default). Timeouts, refused
    connections, 429 and 5xx replies are retryable :class:`LLMCallError`; another 4xx or a
    reply that is not a chat completion is not.
    """

    def __init__(self, *, server_base_url: str, model: str, timeout_s: float = 60.0,
                 headers: Mapping[str, str] | None = None, request_sender: RequestSender | None = None,
                 api_key: str | None = None, base_url: str | None = None) -> None:
        if not server_base_url.startswith(("http://", "https://")):
            raise ValueError(f"server_base_url must be an http(s) URL, got {server_base_url!r}")
        self.server_base_url = server_base_url.rstrip("/")
        #: The upstream the server should call (its per-request ``base_url``), unless params say.
        self.base_url = base_url
        self.model = model
        self.headers = dict(headers or {})
        if api_key:
            self.headers.setdefault("Authorization", f"Bearer {api_key}")
        self.timeout_s = timeout_s
        self.request_sender: RequestSender = request_sender if request_sender is not None else UrllibRequestSender()

    @property
    def endpoint(self) -> str:
        base = self.server_base_url
        return f"{base}/chat/completions" if base.endswith("/v1") else f"{base}/v1/chat/completions"

    def generate(self, *, prompt: str | None = None, messages: Sequence[Mapping[str, Any]] | None = None,
                 system_prompt: str | None = None, tools: Sequence[Any] | None = None,
                 params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        params = dict(params or {})
        trace = _trace(params)
        body: dict[str, Any] = {"model": params.pop("model", self.model),
                                "messages": _messages(prompt, messages, system_prompt), "stream": False}
        upstream = params.pop("base_url", None) or self.base_url
        if upstream:
            body["base_url"] = upstream
        for key in GENERATION_KEYS:
            if params.get(key) is not None:
                body["max_tokens" if key == "max_output_tokens" else key] = params[key]
        if tools:
            body["tools"] = [tool_schema(t) for t in tools]
        headers = {"Content-Type": "application/json", **self.headers}
        given = {k.lower() for k in headers}
        extra: dict[str, str] = {}
        if trace:
            extra["X-AbstractCore-Trace-Metadata"] = json.dumps(trace, separators=(",", ":"), default=str)
            for key in TRACE_KEYS:
                if trace.get(key) is not None:
                    extra["X-AbstractCore-" + "-".join(p.capitalize() for p in key.split("_"))] = str(trace[key])
        extra.update(outbound_headers.get() or {})  # a driver's (traceparent), runtime/outbound.py
        headers.update({k: v for k, v in extra.items() if k.lower() not in given})  # the caller's win
        try:
            sent = self.request_sender.post(self.endpoint, headers=headers, json=body, timeout=self.timeout_s)
        except LLMCallError:
            raise
        except Exception as exc:  # the sender's errors, whatever transport it uses
            raise _send_failure(exc, mask_url(self.endpoint)) from None
        reply, reply_headers = _unwrap(sent)
        try:
            choice = reply["choices"][0]
            message = dict(choice.get("message") or {})
        except (KeyError, IndexError, TypeError, AttributeError, ValueError):
            raise LLMCallError(f"reply from {mask_url(self.endpoint)} is not an OpenAI chat completion: "
                               f"{str(reply)[:120]!r}", retryable=False) from None
        trace_id = reply_headers.get("x-abstractcore-trace-id") or reply_headers.get("x-trace-id")
        return normalize_result(content=message.get("content"), tool_calls=message.get("tool_calls"),
                                usage=reply.get("usage"), model=reply.get("model"),
                                finish_reason=choice.get("finish_reason"), metadata={"id": reply.get("id")},
                                trace_id=trace_id)


def _unwrap(sent: Any) -> tuple[Any, dict[str, str]]:
    """(body, lower-cased headers) from what a sender returned: an HttpResponse, a plain dict
    (the body), or a response object with ``json()`` and ``headers`` (httpx, requests)."""
    if isinstance(sent, Mapping):
        return sent, {}
    headers = getattr(sent, "headers", None)
    lowered = {str(k).lower(): str(v) for k, v in headers.items()} if isinstance(headers, Mapping) else {}
    if hasattr(sent, "body"):
        return sent.body, lowered
    read = getattr(sent, "json", None)
    if callable(read):
        try:
            return read(), lowered
        except ValueError:
            return getattr(sent, "text", None), lowered
    return sent, lowered


def _send_failure(exc: Exception, shown: str) -> LLMCallError:
    """The LLMCallError for a sender's exception: an HTTP status decides whether to retry."""
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int):
        status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int):
        detail = getattr(exc, "detail", None) or " ".join(str(exc).split())[:300]
        return LLMCallError(f"HTTP {status} from {shown}: {detail}", retryable=status >= 500 or status == 429,
                            status=status)
    if isinstance(exc, OSError):  # refused, unreachable, timed out (URLError and TimeoutError are OSErrors)
        return LLMCallError(f"cannot reach {shown}: {getattr(exc, 'reason', None) or exc}", retryable=True)
    return LLMCallError(f"{type(exc).__name__} from {shown}: {' '.join(str(exc).split())[:300]}", retryable=True)

_IMPORT_LOCK = threading.Lock()


def import_abstractcore() -> Any:
    """``import abstractcore``, keeping the root logger's handlers and level as they were."""
    with _IMPORT_LOCK:
        root = logging.getLogger()
        saved = (list(root.handlers), root.level)
        try:
            import abstractcore
        except ImportError:
            raise AbstractCoreMissing() from None
        finally:
            root.handlers[:] = saved[0]
            root.setLevel(saved[1])
        return abstractcore


class LocalAbstractCoreLLMClient:
    """AbstractCore's ``create_llm(provider, model)`` in this process, made once per provider,
    model, base URL and ``llm_kwargs``, without the provider's own retries and with AbstractCore's
    tracing on (``enable_tracing=False`` in ``llm_kwargs`` turns it off), so each result has a
    ``trace_id`` and AbstractCore's trace of the call carries the run's ids."""

    _cache: dict[tuple[str, str, str | None, str], Any] = {}

    def __init__(self, *, provider: str, model: str, llm_kwargs: Mapping[str, Any] | None = None) -> None:
        self.provider, self.model = provider, model
        self.llm_kwargs = dict(llm_kwargs or {})

    def get_model_capabilities(self) -> dict[str, Any]:
        """What the model can do (``max_tokens``, tool support...) from AbstractCore's model tables,
        without a request; ``{"max_tokens": 32768}`` when it cannot say."""
        try:
            import_abstractcore()
            from abstractcore.architectures.detection import get_model_capabilities

            found = get_model_capabilities(self.model)
        except Exception:  # capabilities are a hint; the call itself reports real errors
            found = None
        return dict(found) if isinstance(found, Mapping) and found else {"max_tokens": 32768}

    def _llm(self, base_url: str | None) -> Any:
        key = (self.provider, self.model, base_url, json.dumps(self.llm_kwargs, sort_keys=True, default=repr))
        llm = self._cache.get(key)
        if llm is None:
            import_abstractcore()
            root = logging.getLogger()
            saved = (list(root.handlers), root.level)
            try:
                from abstractcore import create_llm
                from abstractcore.core.retry import RetryConfig

                kwargs = {"retry_config": RetryConfig(max_attempts=1), "enable_tracing": True, **self.llm_kwargs}
                if base_url:
                    kwargs["base_url"] = base_url
                llm = create_llm(self.provider, model=self.model, **kwargs)
            finally:
                root.handlers[:] = saved[0]
                root.setLevel(saved[1])
            self._cache[key] = llm
        return llm

    def generate(self, *, prompt: str | None = None, messages: Sequence[Mapping[str, Any]] | None = None,
                 system_prompt: str | None = None, tools: Sequence[Any] | None = None,
                 params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        params = dict(params or {})
        trace = _trace(params)
        base_url = params.pop("base_url", None) or self.llm_kwargs.get("base_url")
        kwargs = {k: params[k] for k in GENERATION_KEYS if params.get(k) is not None and k != "max_tokens"}
        if trace:
            kwargs["trace_metadata"] = trace  # kept in AbstractCore's trace of this call, not sent upstream
        try:
            llm = self._llm(base_url)
            response = llm.generate(prompt or "", messages=[dict(m) for m in messages or []] or None,
                                    system_prompt=system_prompt, tools=list(tools) if tools else None, **kwargs)
        except AbstractCoreMissing:
            raise
        except Exception as exc:  # the provider's errors (ProviderAPIError and others)
            text = " ".join(str(exc).split())[:300]
            status = getattr(exc, "status_code", None)
            retryable = not (isinstance(status, int) and 400 <= status < 500 and status != 429)
            raise LLMCallError(f"{type(exc).__name__}: {text}", retryable=retryable, status=status) from None
        result = _normalize_local_response(response)
        if trace:
            result["metadata"].setdefault("trace", trace)
        return result
