"""LLM calls and tool calls through AbstractCore, in process or through an AbstractCore server.

Importing this package does not import ``abstractcore``: only the local client and the
AbstractCore tool executor do, on first use (``pip install 'abstractruntime-celery[abstractcore]'``).
The remote client needs nothing but the standard library.
"""

from ...limits import RuntimeConfig
from .effect_handlers import build_effect_handlers, make_llm_call_handler, make_tool_calls_handler
from .factory import create_hybrid_runtime, create_local_runtime, create_remote_runtime
from .llm_client import (
    AbstractCoreMissing,
    LLMCallError,
    LLMClient,
    LocalAbstractCoreLLMClient,
    RemoteAbstractCoreLLMClient,
    normalize_result,
)
from .request_sender import HttpResponse, HttpStatusError, RequestSender, UrllibRequestSender
from .tool_executor import AbstractCoreToolExecutor, MappingToolExecutor, PassthroughToolExecutor, ToolExecutor
from .tool_schema import tool_schema

__all__ = [
    # LLM clients
    "LLMClient",
    "LocalAbstractCoreLLMClient",
    "RemoteAbstractCoreLLMClient",
    "normalize_result",
    "tool_schema",
    # The remote client's transport
    "HttpResponse",
    "RequestSender",
    "UrllibRequestSender",
    # Tool executors
    "ToolExecutor",
    "MappingToolExecutor",
    "AbstractCoreToolExecutor",
    "PassthroughToolExecutor",
    # Handlers and runtimes
    "build_effect_handlers",
    "make_llm_call_handler",
    "make_tool_calls_handler",
    "create_local_runtime",
    "create_remote_runtime",
    "create_hybrid_runtime",
    "RuntimeConfig",
    # Errors
    "AbstractCoreMissing",
    "HttpStatusError",
    "LLMCallError",
]
