"""The Celery driver: workers that tick runs kept in Redis, and the producer client.

``workers.app`` holds the Celery app and its tasks (``celery -A workers.app worker``),
``workers.engine`` what each task does, ``workers.client`` the producer API,
``workers.registry`` the workflows, tools and effect handlers a worker knows by name, and
``workers.settings`` every setting. Importing this package starts nothing.
"""

from .registry import register_effect_handler, register_tool, register_workflow, registry, set_effect_policy, tool
from .settings import WorkerSettings

__all__ = [
    "Client",
    "WorkerSettings",
    "create_app",
    "register_workflow",
    "register_tool",
    "register_effect_handler",
    "set_effect_policy",
    "tool",
    "registry",
]


def __getattr__(name: str) -> object:
    # Celery is imported only by the parts that need it.
    if name == "Client":
        from .client import Client

        return Client
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
