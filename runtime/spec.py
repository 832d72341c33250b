"""Workflow definitions and the context a node handler receives."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ._clock import utc_now_iso
from .errors import UnknownNodeError
from .models import RunState, StepPlan

__all__ = ["RunContext", "DefaultRunContext", "NodeHandler", "WorkflowSpec"]


@runtime_checkable
class RunContext(Protocol):
    """What a node handler may ask of the runtime: the current time."""

    def now_iso(self) -> str:
        """Current UTC time as an ISO-8601 string."""
        ...


class DefaultRunContext:
    """The wall clock, in UTC."""

    def now_iso(self) -> str:
        return utc_now_iso()


#: A node: ``handler(run, ctx) -> StepPlan``. It may change ``run.vars``; the runtime saves them.
NodeHandler = Callable[[RunState, Any], StepPlan]


@dataclass(frozen=True)
class WorkflowSpec:
    """A graph of node handlers keyed by node id, entered at ``entry_node``."""

    workflow_id: str
    entry_node: str
    nodes: Mapping[str, NodeHandler]

    def get_node(self, node_id: str) -> NodeHandler:
        """The handler of ``node_id``; :class:`UnknownNodeError` (a KeyError) if there is none."""
        try:
            return self.nodes[node_id]
        except KeyError:
            raise UnknownNodeError(workflow_id=self.workflow_id, node_id=node_id) from None

    def is_terminal(self, node_id: str | None = None) -> bool:
        """Kept for API parity: termination is decided by plans, never by node ids."""
        return False
