"""The old private name of :mod:`runtime.query`, now public; kept so that old imports work."""

from .query import RunSummary, select_children, select_due, select_runs, summarize

__all__ = ["RunSummary", "summarize", "select_runs", "select_due", "select_children"]
