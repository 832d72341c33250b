"""Run attributes: indexed business attributes a producer sets on a run at its start.

``client.start("refund", attrs={"customer": "c-42", "tier": 3})`` keeps them in the run as
``vars["_attrs"]`` and in one sorted set per (name, value) (``stores/redis/attrs.py``), so that
``client.list_runs(attrs={"customer": "c-42"})`` finds the customer's runs without a scan.

The rules, checked here before anything is stored (:func:`validate_attrs`):

* a name is in the deployment's allow-list (``ABSTRACTRUNTIME_RUN_ATTRS``; empty by default,
  so attributes are refused until it names some) and matches ``[a-z][a-z0-9_]{0,31}``;
* a value is a ``str``, an ``int`` or a ``bool``, stored as text: an int as its decimal
  digits, a bool as ``true`` / ``false``. Text, because the index key holds the value and a
  query from the command line (``--attr tier=3``) must find the run ``attrs={"tier": 3}``
  started; the value read back (``status``, ``vars["_attrs"]``) is that text;
* the text is 1 to 128 characters, without control characters;
* at most 16 attributes per run.

A breach raises :class:`InvalidRunAttribute` naming the attribute and what is wrong. The
attributes are set once, at the start, and never change; child runs do not inherit them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from runtime.errors import RunError
from stores.redis.attrs import ATTRS_VARS

__all__ = ["InvalidRunAttribute", "AttrValues", "validate_attrs", "query_attrs", "attr_value", "ATTRS_VARS",
           "NAME_PATTERN", "MAX_ATTRS", "MAX_VALUE_CHARS"]

#: Attributes as a producer gives them: name -> str, int or bool.
AttrValues = Mapping[str, str | int | bool]

#: What an attribute name looks like (also each name of ``ABSTRACTRUNTIME_RUN_ATTRS``).
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")
#: Attributes one run may carry.
MAX_ATTRS = 16
#: Characters of an attribute's value, as stored (text).
MAX_VALUE_CHARS = 128

_NAME_RULE = "a lower-case letter, then up to 31 lower-case letters, digits or _"


class InvalidRunAttribute(RunError, ValueError):
    """Raised when a run attribute is refused (at the start, nothing is stored; or in a query);
    ``name`` is the attribute (None when the whole mapping is wrong) and ``problem`` what is wrong."""

    def __init__(self, name: str | None, problem: str) -> None:
        self.name, self.problem = name, problem
        super().__init__(f"attrs.{name}: {problem}" if name is not None else f"attrs: {problem}")


def attr_value(name: str, value: Any) -> str:
    """The stored text of one attribute's value; :class:`InvalidRunAttribute` when it may not be one."""
    if isinstance(value, bool):  # before int: a bool is an int
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        raise InvalidRunAttribute(name, f"value must be a str, int or bool, got {type(value).__name__}")
    if not text:
        raise InvalidRunAttribute(name, "empty value")
    if len(text) > MAX_VALUE_CHARS:
        raise InvalidRunAttribute(name, f"value longer than {MAX_VALUE_CHARS} characters")
    bad = next((c for c in text if c < " " or "\x7f" <= c <= "\x9f"), None)
    if bad is not None:
        raise InvalidRunAttribute(name, f"value holds a control character ({bad!r})")
    return text


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        raise InvalidRunAttribute(str(name), f"not a valid attribute name ({_NAME_RULE})")
    return name


def query_attrs(attrs: Mapping[str, Any]) -> dict[str, str]:
    """Attributes to look runs up by, as stored text; names and values follow the rules of a
    start, but need not be in the allow-list (reading needs no configuration)."""
    if not isinstance(attrs, Mapping):
        raise InvalidRunAttribute(None, f"must be a mapping of name to value, got {type(attrs).__name__}")
    return {_check_name(name): attr_value(name, value) for name, value in attrs.items()}


def validate_attrs(attrs: Mapping[str, Any], allowed: Iterable[str]) -> dict[str, str]:
    """The attributes a run starts with, as stored text, checked against every rule and the
    allow-list ``allowed``; :class:`InvalidRunAttribute` on the first breach."""
    if not isinstance(attrs, Mapping):
        raise InvalidRunAttribute(None, f"must be a mapping of name to value, got {type(attrs).__name__}")
    if len(attrs) > MAX_ATTRS:
        raise InvalidRunAttribute(None, f"{len(attrs)} attributes, at most {MAX_ATTRS}")
    permitted = tuple(allowed)
    out = {}
    for name, value in attrs.items():
        _check_name(name)
        if name not in permitted:
            listed = ", ".join(permitted) if permitted else "none"
            raise InvalidRunAttribute(name, f"not an allowed attribute (allowed: {listed}; set "
                                      f"ABSTRACTRUNTIME_RUN_ATTRS)")
        out[name] = attr_value(name, value)
    return out
