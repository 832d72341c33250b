"""The Celery counterparts of the three AbstractCore modes: LLM calls on the ``llm`` queue,
tool calls on the ``tools`` queue, with the handlers of ``runtime.integrations.abstractcore``.

Call one of these in a module the workers import (``ABSTRACTRUNTIME_IMPORTS``)::

    from workers.abstractcore import use_remote
    use_remote(server_base_url="http://abstractcore:8000", model="openai-compatible/gpt-4o-mini")

Tools: ``"registry"`` runs the tools registered with ``workers.registry.tool`` (the default
of the local and hybrid modes), ``"abstractcore"`` AbstractCore's global registry,
``"passthrough"`` parks the run for the host (the default of the remote mode); or give any
``ToolExecutor``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runtime import EffectType
from runtime.integrations.abstractcore import (
    AbstractCoreToolExecutor,
    LLMClient,
    LocalAbstractCoreLLMClient,
    PassthroughToolExecutor,
    RemoteAbstractCoreLLMClient,
    ToolExecutor,
    make_llm_call_handler,
    make_tool_calls_handler,
)

from .registry import Registry, registry

__all__ = ["use_local", "use_remote", "use_hybrid", "use_llm"]


def _tools(tools: str | ToolExecutor, reg: Registry) -> ToolExecutor:
    if not isinstance(tools, str):
        return tools
    if tools == "registry":
        return reg.live_tools()
    if tools == "abstractcore":
        return AbstractCoreToolExecutor()
    if tools == "passthrough":
        return PassthroughToolExecutor()
    raise ValueError(f"tools must be 'registry', 'abstractcore', 'passthrough' or a ToolExecutor, got {tools!r}")


def use_llm(llm: LLMClient, *, tools: str | ToolExecutor = "registry", reg: Registry | None = None,
            artifact_store: Any = None, max_inline_bytes: int | None = None) -> None:
    """Handle LLM_CALL with ``llm`` and TOOL_CALLS with ``tools`` on these workers; results over
    ``max_inline_bytes`` go to ``artifact_store`` (e.g. ``stores.redis.RedisArtifactStore``)."""
    reg = reg if reg is not None else registry
    reg.register_effect_handler(EffectType.LLM_CALL, make_llm_call_handler(
        llm=llm, artifact_store=artifact_store, max_inline_bytes=max_inline_bytes))
    reg.register_effect_handler(EffectType.TOOL_CALLS, make_tool_calls_handler(
        tools=_tools(tools, reg), artifact_store=artifact_store, max_inline_bytes=max_inline_bytes))


def use_local(*, provider: str, model: str, llm_kwargs: Mapping[str, Any] | None = None,
              tools: str | ToolExecutor = "registry", reg: Registry | None = None) -> None:
    """AbstractCore inside each worker process (``pip install '.[abstractcore]'``)."""
    use_llm(LocalAbstractCoreLLMClient(provider=provider, model=model, llm_kwargs=llm_kwargs), tools=tools, reg=reg)


def use_remote(*, server_base_url: str, model: str, headers: Mapping[str, str] | None = None,
               timeout_s: float = 60.0, tools: str | ToolExecutor = "passthrough", reg: Registry | None = None) -> None:
    """An AbstractCore server over HTTP; tools pass through to the host by default."""
    llm = RemoteAbstractCoreLLMClient(server_base_url=server_base_url, model=model, headers=headers,
                                      timeout_s=timeout_s)
    use_llm(llm, tools=tools, reg=reg)


def use_hybrid(*, server_base_url: str, model: str, headers: Mapping[str, str] | None = None,
               timeout_s: float = 60.0, tools: str | ToolExecutor = "registry", reg: Registry | None = None) -> None:
    """An AbstractCore server for the LLM, tools run on the ``tools`` workers."""
    use_remote(server_base_url=server_base_url, model=model, headers=headers, timeout_s=timeout_s, tools=tools,
               reg=reg)
