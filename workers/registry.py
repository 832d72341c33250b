"""What workers know by name: workflows by id, tools by name, effect handlers by effect type.

Not to be confused with :mod:`runtime.registry`, the kernel's ``WorkflowRegistry`` (workflow
id -> spec, nothing else): the process-wide :data:`registry` here wraps one of those for its
workflows and adds the tools, effect handlers and effect policy of a worker process.

Nothing callable crosses the wire: a message names a run, and the run names its workflow;
the code is what the worker imported. The modules listed in ``ABSTRACTRUNTIME_IMPORTS``
register their workflows here when imported::

    from workers.registry import register_workflow, tool

    register_workflow(WorkflowSpec(workflow_id="greet", entry_node="hello", nodes={...}))

    @tool
    def add(a: int, b: int) -> int:
        return a + b
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from runtime import EffectType, WorkflowRegistry, WorkflowSpec
from runtime.effects import adapt_handler
from runtime.integrations.abstractcore.tool_executor import MappingToolExecutor, ToolExecutor
from runtime.models import EffectOutcome
from runtime.policies import DefaultEffectPolicy, EffectPolicy
from runtime.step import EffectHandler

from .sla import InvalidSlaRule, SlaRule

__all__ = [
    "Registry",
    "registry",
    "register_workflow",
    "register_tool",
    "tool",
    "register_effect_handler",
    "set_effect_policy",
    "import_modules",
    "register_sla",
]

F = TypeVar("F", bound=Callable[..., Any])


class Registry:
    """Workflows, tools and effect handlers of one process (a worker or a producer)."""

    def __init__(self) -> None:
        self.workflows = WorkflowRegistry()
        self._tools: dict[str, Callable[..., Any]] = {}
        self._inline: set[str] = set()
        self._handlers: dict[EffectType, EffectHandler] = {}
        self._lock = threading.Lock()
        self.effect_policy: EffectPolicy = DefaultEffectPolicy()
        self.context: Any = None
        self._imported: set[str] = set()
        self._sla: dict[str, dict[str, SlaRule]] = {}

    def register_workflow(self, workflow: WorkflowSpec, *, replace: bool = False) -> WorkflowSpec:
        """Register ``workflow`` under its id (``replace=True`` to swap a registered one)."""
        if not isinstance(workflow, WorkflowSpec):
            raise TypeError(f"register_workflow() takes a WorkflowSpec, got {type(workflow).__name__}")
        with self._lock:
            if replace and workflow.workflow_id in self.workflows:
                self.workflows.unregister(workflow.workflow_id)
            self.workflows.register(workflow)
        return workflow

    def register_sla(self, workflow_id: str, rule: SlaRule | Mapping[str, Any], *, replace: bool = False) -> SlaRule:
        """Declare an SLA rule on the runs of ``workflow_id`` (``workers/sla.py``); a rule of the
        same name is refused unless ``replace``. :class:`~workers.sla.InvalidSlaRule` names the field."""
        if not isinstance(workflow_id, str) or not workflow_id:
            raise InvalidSlaRule("workflow_id", f"must be a non-empty text, got {workflow_id!r}")
        try:
            rule = rule if isinstance(rule, SlaRule) else SlaRule.from_dict(rule)
        except InvalidSlaRule as exc:
            raise InvalidSlaRule(exc.field, exc.problem, rule=exc.rule, workflow_id=workflow_id) from None
        except TypeError as exc:  # SlaRule(**data) with a missing or extra argument
            raise InvalidSlaRule("rule", str(exc), workflow_id=workflow_id) from None
        with self._lock:
            rules = self._sla.setdefault(workflow_id, {})
            if rule.name in rules and rules[rule.name] != rule and not replace:
                raise InvalidSlaRule("name", "a rule of this name is registered already", rule=rule.name,
                                     workflow_id=workflow_id)
            rules[rule.name] = rule
        return rule

    def sla_rules(self, workflow_id: str) -> tuple[SlaRule, ...]:
        """The SLA rules declared on ``workflow_id`` (none when the workflow is unknown here)."""
        return tuple(self._sla.get(workflow_id, {}).values())

    @property
    def all_sla_rules(self) -> tuple[SlaRule, ...]:
        """Every SLA rule declared in this process, of any workflow."""
        return tuple(rule for rules in list(self._sla.values()) for rule in rules.values())

    def register_tool(self, name: str, fn: Callable[..., Any], *, inline: bool = False) -> None:
        """Register ``fn`` as the tool ``name``; ValueError if another function has the name.

        The same function defined again (its module re-imported: same module and qualified
        name) replaces the first. ``inline``: a fast, local tool (no network), which a worker
        with ``steps_per_task`` > 1 runs inside the tick that asked for it
        (``workers/engine/inline.py``).
        """
        if not isinstance(name, str) or not name:
            raise ValueError("a tool needs a non-empty name")
        if not callable(fn):
            raise ValueError(f"tool {name!r} is not callable")
        with self._lock:
            old = self._tools.get(name, fn)
            if old is not fn and _origin(old) != _origin(fn):
                raise ValueError(f"tool {name!r} is already registered (to {_origin(old)})")
            self._tools[name] = fn
            if inline:
                self._inline.add(name)
            else:
                self._inline.discard(name)

    def inline_tools(self, names: Any) -> bool:
        """Whether every tool of ``names`` was registered ``inline=True`` (False for none)."""
        names = list(names)
        return bool(names) and all(n in self._inline for n in names)

    @property
    def tools(self) -> Mapping[str, Callable[..., Any]]:
        return dict(self._tools)

    def register_effect_handler(self, effect_type: EffectType | str, handler: Callable[..., EffectOutcome]) -> None:
        """Handle ``effect_type`` with ``handler(run, effect[, default_next_node])`` on workers."""
        with self._lock:
            self._handlers[EffectType(effect_type)] = adapt_handler(handler)

    @property
    def effect_handlers(self) -> Mapping[EffectType, EffectHandler]:
        """The registered handlers; TOOL_CALLS falls back to the registered tools."""
        handlers = dict(self._handlers)
        if EffectType.TOOL_CALLS not in handlers and self._tools:
            from runtime.integrations.abstractcore import make_tool_calls_handler

            handlers[EffectType.TOOL_CALLS] = make_tool_calls_handler(tools=self.live_tools())
        return handlers

    def live_tools(self) -> ToolExecutor:
        """A tool executor over the tools registered here, looked up at each call."""
        return _LiveTools(self)

    def import_modules(self, names: Iterable[str]) -> None:
        """Import each module once (it registers its workflows); ImportError names the module."""
        for name in names:
            if name in self._imported:
                continue
            try:
                importlib.import_module(name)
            except ImportError as exc:
                raise ImportError(f"cannot import {name!r} (listed in ABSTRACTRUNTIME_IMPORTS): {exc}") from exc
            self._imported.add(name)


def _origin(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


class _LiveTools:
    def __init__(self, reg: Registry) -> None:
        self.reg = reg

    def execute(self, tool_calls: Any) -> dict[str, Any]:
        return MappingToolExecutor(self.reg.tools).execute(tool_calls)


#: The process-wide registry that workers and producers use.
registry = Registry()


def register_workflow(workflow: WorkflowSpec, *, replace: bool = False) -> WorkflowSpec:
    """Register a workflow with the process-wide registry (returns it, so it can decorate)."""
    return registry.register_workflow(workflow, replace=replace)


def register_tool(name: str, fn: Callable[..., Any], *, inline: bool = False) -> None:
    registry.register_tool(name, fn, inline=inline)


def tool(fn: F | None = None, *, name: str | None = None, inline: bool = False) -> Any:
    """Decorator: ``@tool`` or ``@tool(name="search")`` registers a function as a tool;
    ``@tool(inline=True)``: a fast, local one, run inside its tick where a worker allows it."""

    def wrap(f: F) -> F:
        registry.register_tool(name or f.__name__, f, inline=inline)
        return f

    return wrap(fn) if fn is not None else wrap


def register_effect_handler(effect_type: EffectType | str, handler: Callable[..., EffectOutcome]) -> None:
    registry.register_effect_handler(effect_type, handler)


def set_effect_policy(policy: EffectPolicy) -> None:
    """The retry policy and idempotency keys of effects on workers (default: no retries)."""
    registry.effect_policy = policy


def import_modules(names: Iterable[str]) -> None:
    registry.import_modules(names)


def register_sla(workflow_id: str, rule: SlaRule | Mapping[str, Any], *, replace: bool = False) -> SlaRule:
    """Declare an SLA rule on a workflow's runs in the process-wide registry (``workers/sla.py``)."""
    return registry.register_sla(workflow_id, rule, replace=replace)
