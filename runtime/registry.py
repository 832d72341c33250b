"""``WorkflowRegistry``: the kernel's map of workflow id to :class:`WorkflowSpec`, so that a
run's ``workflow_id`` finds its code again.

Not to be confused with :mod:`workers.registry`, the Celery driver's process-wide
``Registry``: that one holds one of these for its workflows, and also the tools, effect
handlers and effect policy a worker process knows by name.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from .errors import WorkflowAlreadyRegistered, WorkflowNotRegistered
from .spec import WorkflowSpec

__all__ = ["WorkflowRegistry"]


class WorkflowRegistry:
    """A thread-safe mapping of workflow id to :class:`WorkflowSpec`."""

    def __init__(self) -> None:
        self._specs: dict[str, WorkflowSpec] = {}
        self._lock = threading.Lock()

    def register(self, workflow: WorkflowSpec) -> None:
        """Add ``workflow``; :class:`WorkflowAlreadyRegistered` if its id is taken (even by itself)."""
        with self._lock:
            if workflow.workflow_id in self._specs:
                raise WorkflowAlreadyRegistered(workflow.workflow_id)
            self._specs[workflow.workflow_id] = workflow

    def unregister(self, workflow_id: str) -> None:
        """Remove a workflow; :class:`WorkflowNotRegistered` if it is not there."""
        with self._lock:
            if workflow_id not in self._specs:
                raise WorkflowNotRegistered(workflow_id)
            del self._specs[workflow_id]

    def get(self, workflow_id: str) -> WorkflowSpec | None:
        return self._specs.get(workflow_id)

    def get_or_raise(self, workflow_id: str) -> WorkflowSpec:
        spec = self._specs.get(workflow_id)
        if spec is None:
            raise WorkflowNotRegistered(workflow_id)
        return spec

    def list_ids(self) -> list[str]:
        return list(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, workflow_id: object) -> bool:
        return workflow_id in self._specs

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._specs))
