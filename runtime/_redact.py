"""Keeping credentials out of ledger records: the values of keys that name one are hidden."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["SECRET_KEY_PATTERN", "REDACTED", "redact_secrets"]

#: Keys whose values are credentials: kept out of ledger records (the run keeps them).
SECRET_KEY_PATTERN = re.compile(r"(api[_-]?key|apikey|password|passwd|secret|token|authorization|credential)",
                                re.IGNORECASE)
#: What a hidden value becomes.
REDACTED = "***"


def redact_secrets(value: Any) -> Any:
    """``value`` with the value of every dict key that names a credential replaced by ``***``.

    Returns ``value`` itself when there is nothing to hide (no copy on the common path).
    """
    if isinstance(value, dict):
        out = None
        for k, v in value.items():
            if isinstance(k, str) and SECRET_KEY_PATTERN.search(k) and v is not None:
                new: Any = REDACTED
            else:
                new = redact_secrets(v)
            if new is not v:
                if out is None:
                    out = dict(value)
                out[k] = new
        return value if out is None else out
    if isinstance(value, list):
        items = [redact_secrets(v) for v in value]
        return value if all(a is b for a, b in zip(items, value)) else items
    return value
