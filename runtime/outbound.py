"""Headers a driver asks the effect handlers' outgoing HTTP requests to carry (a W3C
``traceparent`` under the Celery driver with OpenTelemetry on; ``workers/tracing.py``).

The kernel knows nothing of tracing: a driver sets :data:`outbound_headers` around an effect
handler, and an HTTP client of ours (the AbstractCore remote LLM client) adds them to each
request, under the caller's own headers, which win.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar

__all__ = ["outbound_headers"]

outbound_headers: ContextVar[Mapping[str, str] | None] = ContextVar("abstractruntime_outbound_headers",
                                                                     default=None)
