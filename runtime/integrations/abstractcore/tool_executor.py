"""Tool executors for TOOL_CALLS: a mapping of callables, AbstractCore's registry, or passthrough.

An executor's ``execute(tool_calls=...)`` (called by keyword) takes
``[{"name", "arguments", "call_id"}]`` and returns
``{"mode": "executed", "results": [{call_id, name, success, output, error}]}`` (errors are
per call: one failing or unknown tool does not fail the others), or, for passthrough,
``{"mode": "passthrough", "tool_calls": [...]}``: the run then waits for the host to run
the tools and resume it with their results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["ToolExecutor", "MappingToolExecutor", "AbstractCoreToolExecutor", "PassthroughToolExecutor"]


@runtime_checkable
class ToolExecutor(Protocol):
    def execute(self, *, tool_calls: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Run (or pass through) the calls; the handler always passes ``tool_calls`` by keyword."""


def _tool_name(tool: Any) -> str | None:
    definition = getattr(tool, "_tool_definition", None)
    return getattr(definition, "name", None) or getattr(tool, "__name__", None)


class MappingToolExecutor:
    """Runs each call with the callable registered under its name, keyword arguments."""

    def __init__(self, tool_map: Mapping[str, Callable[..., Any]]) -> None:
        self.tool_map = dict(tool_map)

    @classmethod
    def from_tools(cls, tools: Iterable[Callable[..., Any]]) -> MappingToolExecutor:
        """Name each tool by its AbstractCore definition or ``__name__``; ValueError for a
        missing name, something not callable, or a name given twice."""
        mapping: dict[str, Callable[..., Any]] = {}
        for tool in tools:
            if not callable(tool):
                raise ValueError(f"tool {tool!r} is not callable")
            name = _tool_name(tool)
            if not name:
                raise ValueError(f"tool {tool!r} has no name")
            if name in mapping:
                raise ValueError(f"two tools are named {name!r}")
            mapping[name] = tool
        return cls(mapping)

    def execute(self, tool_calls: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        results = []
        for call in tool_calls:
            call = call if isinstance(call, Mapping) else {}
            name = str(call.get("name") or "")
            call_id = "" if call.get("call_id") is None else str(call.get("call_id"))
            args = call.get("arguments") or {}
            fn = self.tool_map.get(name)
            if fn is None:
                results.append({"call_id": call_id, "name": name, "success": False, "output": None,
                                "error": f"Tool '{name}' not found"})
                continue
            try:
                output = fn(**args) if isinstance(args, Mapping) else fn(args)
            except Exception as exc:  # a tool's failure is data for the agent, not a crash
                results.append({"call_id": call_id, "name": name, "success": False, "output": None,
                                "error": str(exc) or type(exc).__name__})
                continue
            results.append({"call_id": call_id, "name": name, "success": True, "output": output, "error": None})
        return {"mode": "executed", "results": results}


class AbstractCoreToolExecutor:
    """AbstractCore's tool registry (the global one unless given): ``execute_tools``."""

    def __init__(self, registry: Any = None) -> None:
        self._registry = registry

    def execute(self, tool_calls: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        from .llm_client import import_abstractcore

        import_abstractcore()
        from abstractcore.tools import ToolCall

        registry = self._registry
        if registry is None:
            from abstractcore.tools.registry import get_registry

            registry = get_registry()
        calls = [ToolCall(name=str(c.get("name") or ""), arguments=dict(c.get("arguments") or {}),
                          call_id=c.get("call_id")) for c in tool_calls]
        results = []
        for call, result in zip(calls, registry.execute_tools(calls)):
            results.append({"call_id": "" if call.call_id is None else str(call.call_id), "name": call.name,
                            "success": bool(result.success), "output": result.output, "error": result.error})
        return {"mode": "executed", "results": results}


class PassthroughToolExecutor:
    """Runs nothing: the run waits, with the calls in its wait details, for the host's results."""

    def __init__(self, *, mode: str = "passthrough") -> None:
        self.mode = mode

    def execute(self, tool_calls: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return {"mode": self.mode, "tool_calls": [dict(c) for c in tool_calls]}
