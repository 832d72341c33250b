"""The KEYS and ARGV of ``commit.lua`` and ``append.lua``, named in the order their headers list them.

:class:`~stores.redis.backend.RedisBackend` builds them by position (keyword arguments would
cost a tenth of a commit's own time); ``tests/test_lua_contract.py`` checks each name against
the script's opening comment.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["CommitKeys", "CommitArgs", "AppendKeys", "AppendArgs"]


class CommitKeys(NamedTuple):
    """The KEYS of ``commit.lua``, in the order its header lists them."""

    run: str
    ledger: str
    results: str
    updated: str
    workflow: str
    status_old: str
    status_new: str
    reason_old: str
    reason_new: str
    wait_old: str
    wait_new: str
    timers: str
    children: str
    events: str
    leases: str


class CommitArgs(NamedTuple):
    """The ARGV of ``commit.lua`` before its records, in the order its header lists them."""

    mode: str
    expected_version: str
    expected_head: str
    run_id: str
    state: bytes
    updated: str
    status_new: str
    status_old: str
    reason_new: str
    reason_old: str
    wait_new: str
    wait_old: str
    until_ms: str
    has_parent: str
    events_maxlen: int
    new_head: str
    token: str
    dispatch: bytes | str
    lease_ms: str
    fence: str


class AppendKeys(NamedTuple):
    """The KEYS of ``append.lua``, in the order its header lists them."""

    run: str
    ledger: str
    results: str


class AppendArgs(NamedTuple):
    """The ARGV of ``append.lua`` before its records, in the order its header lists them."""

    expected_head: str
    new_head: str
    token: str
    lookup_key: str
    dispatch: bytes | str
    fence: str
