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
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from ...errors import AbstractRuntimeError

__all__ = [
    "LLMClient",
    "LLMCallError",
    "AbstractCoreMissing",
    "RemoteAbstractCoreLLMClient",
    "LocalAbstractCoreLLMClient",
    "normalize_result",
    "import_abstractcore",
    "tool_schema",
]

#: Keys of ``params`` that describe the run (sent as headers), not the generation.
TRACE_KEYS = ("run_id", "actor_id", "session_id", "parent_run_id")
#: Generation parameters passed on to the provider when present.
GENERATION_KEYS = ("temperature", "max_tokens", "max_output_tokens", "top_p", "seed", "stop",
                   "frequency_penalty", "presence_penalty")


class LLMCallError(AbstractRuntimeError):
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
                 params: Mapping[str, Any] | None = None) -> dict[str, Any]: ...


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
        if isinstance(call, Mapping):
            args = call.get("arguments")
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except ValueError:
                    pass
            calls.append({"name": call.get("name"), "arguments": safe(args if args is not None else {}),
                          "call_id": None if call.get("call_id") is None else str(call.get("call_id"))})
    return {"content": content, "data": safe(data), "tool_calls": calls or None, "usage": safe(usage),
            "model": model, "finish_reason": finish_reason, "metadata": safe(metadata or {}), "trace_id": trace_id}


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


def tool_schema(tool: Any) -> dict[str, Any]:
    """An OpenAI tool schema from a dict (kept) or a function (its name, docstring and
    annotated parameters), JSON-able, so that it can sit in an effect's payload."""
    if isinstance(tool, Mapping):
        return dict(tool) if "type" in tool else {"type": "function", "function": dict(tool)}
    definition = getattr(tool, "_tool_definition", None)
    name = getattr(definition, "name", None) or getattr(tool, "__name__", "tool")
    description = getattr(definition, "description", None) or (getattr(tool, "__doc__", None) or "").strip()
    import inspect

    props: dict[str, Any] = {}
    required = []
    try:
        for p in inspect.signature(tool).parameters.values():
            kind = {int: "integer", float: "number", bool: "boolean", str: "string"}.get(p.annotation, "string")
            props[p.name] = {"type": kind}
            if p.default is inspect.Parameter.empty:
                required.append(p.name)
    except (TypeError, ValueError):
        pass
    return {"type": "function", "function": {"name": name, "description": description,
                                             "parameters": {"type": "object", "properties": props,
                                                            "required": required}}}


class RemoteAbstractCoreLLMClient:
    """POSTs OpenAI-shaped chat requests to an AbstractCore server (``/v1/chat/completions``).

    ``model`` is ``provider/model`` as the server expects (``openai-compatible/gpt-4o-mini``);
    ``params["base_url"]`` routes one request to another upstream. The run's trace context
    (run, actor, session, parent run) goes in headers. Timeouts, refused connections and 5xx
    replies are retryable :class:`LLMCallError`; a 4xx or a reply that is not JSON is not.
    """

    def __init__(self, *, server_base_url: str, model: str, headers: Mapping[str, str] | None = None,
                 timeout_s: float = 60.0, api_key: str | None = None, base_url: str | None = None) -> None:
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

    @property
    def _shown(self) -> str:
        """The endpoint for messages: a password in the URL is masked."""
        return re.sub(r"://([^/@:]*):[^/@]*@", r"://\1:***@", self.endpoint)

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
        headers.update({k: v for k, v in extra.items() if k.lower() not in given})  # the caller's win
        request = urllib.request.Request(self.endpoint, data=json.dumps(body).encode(), headers=headers,
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
                reply_headers = {k.lower(): v for k, v in response.headers.items()}
        except urllib.error.HTTPError as exc:
            detail = exc.read(500).decode("utf-8", "replace")
            raise LLMCallError(f"HTTP {exc.code} from {self._shown}: {' '.join(detail.split())[:300]}",
                               retryable=exc.code >= 500 or exc.code == 429, status=exc.code) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise LLMCallError(f"cannot reach {self._shown}: {reason}", retryable=True) from None
        try:
            reply = json.loads(raw)
            choice = reply["choices"][0]
            message = choice.get("message") or {}
        except (ValueError, KeyError, IndexError, TypeError):
            raise LLMCallError(f"reply from {self._shown} is not an OpenAI chat completion: "
                               f"{raw[:120].decode('utf-8', 'replace')!r}", retryable=False) from None
        calls = []
        for c in message.get("tool_calls") or []:
            function = c.get("function") or {}
            calls.append({"name": function.get("name"), "arguments": function.get("arguments"), "call_id": c.get("id")})
        trace_id = reply_headers.get("x-abstractcore-trace-id") or reply_headers.get("x-trace-id")
        return normalize_result(content=message.get("content"), tool_calls=calls, usage=reply.get("usage"),
                                model=reply.get("model"), finish_reason=choice.get("finish_reason"),
                                metadata={"id": reply.get("id")}, trace_id=trace_id)


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
    """AbstractCore's ``create_llm(provider, model)`` in this process, made once per
    (provider, model, base_url) and without the provider's own retries."""

    _cache: dict[tuple[str, str, str | None], Any] = {}

    def __init__(self, *, provider: str, model: str, llm_kwargs: Mapping[str, Any] | None = None) -> None:
        self.provider, self.model = provider, model
        self.llm_kwargs = dict(llm_kwargs or {})

    def get_model_capabilities(self) -> dict[str, Any]:
        """What the model can do (context size...), from AbstractCore; ``{"max_tokens": 32768}`` when
        it cannot say."""
        try:
            caps = getattr(self._llm(self.llm_kwargs.get("base_url")), "get_model_capabilities", None)
            found = caps() if callable(caps) else None
        except Exception:  # capabilities are a hint; the call itself reports real errors
            found = None
        return dict(found) if isinstance(found, Mapping) and found else {"max_tokens": 32768}

    def _llm(self, base_url: str | None) -> Any:
        key = (self.provider, self.model, base_url)
        llm = self._cache.get(key)
        if llm is None:
            import_abstractcore()
            root = logging.getLogger()
            saved = (list(root.handlers), root.level)
            try:
                from abstractcore import create_llm
                from abstractcore.core.retry import RetryConfig

                kwargs = {"retry_config": RetryConfig(max_attempts=1), **self.llm_kwargs}
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
        return normalize_result(content=getattr(response, "content", None), tool_calls=getattr(response, "tool_calls",
                                None), usage=getattr(response, "usage", None), model=getattr(response, "model", None),
                                finish_reason=getattr(response, "finish_reason", None),
                                metadata={"trace": trace} if trace else {}, trace_id=None)
