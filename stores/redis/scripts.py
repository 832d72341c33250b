"""The Lua scripts of the Redis stores: their text, read once at import, and their reply codes.

Each script is a file in ``lua/`` that opens with a comment listing its KEYS, ARGV and reply
(``tests/test_lua_contract.py`` checks the Python side against those comments). The index
moves that ``commit.lua`` (one Redis) and ``index.lua`` (Redis Cluster) share are written
once, in ``lua/moves.lua``, and put in front of both scripts here.
"""

from __future__ import annotations

from enum import IntEnum
from importlib import resources

__all__ = ["Reply", "SOURCES", "source"]

_LUA = resources.files(__package__).joinpath("lua")
#: The scripts that call ``move_entries`` (defined in ``lua/moves.lua``).
_USE_MOVES = ("commit", "index")


class Reply(IntEnum):
    """The first item of a reply of ``commit.lua`` or ``append.lua``, and the whole reply of
    ``index.lua`` and ``failure.lua``, and of ``fence.lua`` (the scripts use the same names). ``claim.lua`` replies
    with the Redis time and the members it claimed. The flow-control scripts (``admit*.lua``) reply
    with a code first too."""

    #: commit.lua: the stored version is not the one expected; second item: that version (-1: no run).
    CONFLICT = 0
    #: Written (or written before by the same call, whose reply was lost); second item: the new version.
    OK = 1
    #: The stored chain head is not the one the records were chained to; second item: that head.
    HEAD_MOVED = 2
    #: commit.lua: a run created as new exists already; second item: its version.
    EXISTS = 3
    #: append.lua: a result is recorded under the idempotency key looked up; second item: that result.
    FOUND = 4
    #: failure.lua: there is no such run; nothing was written. admit_renew.lua: the holder holds no live lease.
    MISSING = 5
    #: commit.lua, append.lua, fence.lua: the writer's lease was granted again since it loaded the run
    #: (its fencing token is older than the run's); second item: the run's token. Nothing was written.
    STALE = 6
    #: admit.lua: everything was taken (or the holder's lease is live: nothing needed taking).
    ADMITTED = 7
    #: admit.lua: a rule cannot admit now; nothing was taken. Then: the rule, its kind, until when.
    DEFERRED = 8
    #: admit.lua: a rule refuses (its policy is fail, or the reservation exceeds its whole budget).
    REFUSED = 9


def source(name: str) -> str:
    """The text sent to Redis for ``lua/<name>.lua``, with the shared moves in front where used."""
    text = _LUA.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    if name in _USE_MOVES:
        text = _LUA.joinpath("moves.lua").read_text(encoding="utf-8") + "\n" + text
    return text


#: Every script by name, as sent to Redis (``register_script``: EVALSHA, reloaded after NOSCRIPT).
SOURCES = {name: source(name) for name in ("commit", "append", "index", "claim", "failure", "fence",
                                          "admit", "admit_release", "admit_renew", "admit_reconcile",
                                          "flow_park", "flow_take")}
