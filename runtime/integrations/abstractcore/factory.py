"""Runtimes wired for the three modes: local (LLM in this process), remote (an AbstractCore
server; tools passed through to the host), hybrid (remote LLM, local tools).

None sets a workflow registry (subworkflows fail until one is set, as in the reference);
stores default to the in-memory ones. The Celery counterparts are in ``workers.abstractcore``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...limits import RuntimeConfig
from ...memory import InMemoryLedgerStore, InMemoryRunStore
from ...policies import EffectPolicy
from ...runtime import Runtime
from .effect_handlers import build_effect_handlers
from .llm_client import LocalAbstractCoreLLMClient, RemoteAbstractCoreLLMClient
from .tool_executor import AbstractCoreToolExecutor, PassthroughToolExecutor, ToolExecutor

__all__ = ["create_local_runtime", "create_remote_runtime", "create_hybrid_runtime"]


def _stores(run_store: Any, ledger_store: Any) -> tuple[Any, Any]:
    return (run_store if run_store is not None else InMemoryRunStore(),
            ledger_store if ledger_store is not None else InMemoryLedgerStore())


def create_local_runtime(*, provider: str, model: str, llm_kwargs: Mapping[str, Any] | None = None,
                         run_store: Any = None, ledger_store: Any = None, tool_executor: ToolExecutor | None = None,
                         context: Any = None, effect_policy: EffectPolicy | None = None,
                         config: RuntimeConfig | None = None) -> Runtime:
    """AbstractCore in this process; tools from AbstractCore's global registry unless given.

    The model's capabilities (from AbstractCore's tables, so its context size sets the default
    token limit) go into ``config``; capabilities given in ``config`` win.
    """
    llm = LocalAbstractCoreLLMClient(provider=provider, model=model, llm_kwargs=llm_kwargs)
    runs, ledger = _stores(run_store, ledger_store)
    tools = tool_executor if tool_executor is not None else AbstractCoreToolExecutor()
    base = config if config is not None else RuntimeConfig()
    config = base.with_capabilities({**llm.get_model_capabilities(), **base.model_capabilities})
    return Runtime(run_store=runs, ledger_store=ledger, effect_handlers=build_effect_handlers(llm=llm, tools=tools),
                   context=context, effect_policy=effect_policy, config=config)


def create_remote_runtime(*, server_base_url: str, model: str, headers: Mapping[str, str] | None = None,
                          timeout_s: float = 60.0, run_store: Any = None, ledger_store: Any = None,
                          tool_executor: ToolExecutor | None = None, context: Any = None) -> Runtime:
    """An AbstractCore server over HTTP; tools pass through to the host unless an executor is given."""
    llm = RemoteAbstractCoreLLMClient(server_base_url=server_base_url, model=model, headers=headers,
                                      timeout_s=timeout_s)
    runs, ledger = _stores(run_store, ledger_store)
    tools = tool_executor if tool_executor is not None else PassthroughToolExecutor()
    return Runtime(run_store=runs, ledger_store=ledger, effect_handlers=build_effect_handlers(llm=llm, tools=tools),
                   context=context)


def create_hybrid_runtime(*, server_base_url: str, model: str, headers: Mapping[str, str] | None = None,
                          timeout_s: float = 60.0, run_store: Any = None, ledger_store: Any = None,
                          context: Any = None) -> Runtime:
    """An AbstractCore server for the LLM, AbstractCore's tool registry in this process."""
    llm = RemoteAbstractCoreLLMClient(server_base_url=server_base_url, model=model, headers=headers,
                                      timeout_s=timeout_s)
    runs, ledger = _stores(run_store, ledger_store)
    return Runtime(run_store=runs, ledger_store=ledger,
                   effect_handlers=build_effect_handlers(llm=llm, tools=AbstractCoreToolExecutor()), context=context)
