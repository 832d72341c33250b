"""Enum members to and from the plain values that are stored."""

from __future__ import annotations

from enum import Enum
from typing import Any

from .errors import CorruptRecordError

__all__ = ["enum_member", "plain_value"]


def enum_member(cls: type[Enum], value: Any, what: str) -> Any:
    """The member of ``cls`` for a stored value; :class:`CorruptRecordError` naming ``what`` if none."""
    try:
        return cls(value)
    except ValueError:
        raise CorruptRecordError(location=what, reason=f"unknown {cls.__name__} {value!r}") from None


def plain_value(member: Any) -> Any:
    """The plain value of an enum member; a plain value is returned as it is."""
    # `_value_` is a plain attribute; `.value` goes through a slow descriptor on every access.
    try:
        return member._value_
    except AttributeError:  # already a plain value
        return member
