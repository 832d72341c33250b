"""Random ids: run ids and ledger step ids are version-4 UUID strings."""

from __future__ import annotations

import os

__all__ = ["new_id"]

# RFC 4122 variant bits: the first hex digit of the fourth group is one of 8, 9, a, b.
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def new_id() -> str:
    """A random (version 4) UUID string; ~3x cheaper than ``str(uuid.uuid4())``, same format."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"
