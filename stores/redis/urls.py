"""Redis URLs: which schemes are accepted, how to hide their passwords, where they point.

A leaf module (it imports only the stdlib), so that errors, settings and the embedded
server can all mask a URL before it reaches a message, a log line or an exception field.
"""

from __future__ import annotations

import re
import socket
from urllib.parse import unquote

__all__ = ["URL_SCHEMES", "mask_url", "url_scheme", "scrub", "socket_address"]

#: URL schemes redis-py accepts: plain TCP, TLS, unix socket.
URL_SCHEMES = ("redis", "rediss", "unix")

_MASK = "***"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)(.*)$", re.DOTALL)
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def url_scheme(url: str) -> str:
    """The scheme of ``url``, lowercased (``"rediss"``); "" when it has none."""
    return url.partition("://")[0].lower() if "://" in url else ""


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``; the rest (user, host, port, db, path) kept.

    ``redis://user:pw@host:6379/0`` gives ``redis://user:***@host:6379/0`` and
    ``unix://:pw@/run/redis.sock?db=1`` gives ``unix://:***@/run/redis.sock?db=1``. A user
    part without ``:`` is masked whole (it is often a password written in the wrong place), as
    is a ``password=`` query argument. The user part ends at the last ``@``, so a password
    holding an unescaped ``@``, ``/`` or ``#`` is still hidden; when unsure, more is hidden.
    """
    m = _SCHEME.match(url)
    if m is not None and "@" in m.group(2):
        scheme, rest = m.groups()
        userinfo, _, tail = rest.rpartition("@")
        user, colon, password = userinfo.partition(":")
        if not colon:
            userinfo = _MASK
        elif password:
            userinfo = f"{user}:{_MASK}"
        url = f"{scheme}{userinfo}@{tail}"
    return _QUERY_PASSWORD.sub(lambda q: q.group(1) + _MASK, url)


def _secrets_of(url: str) -> list[str]:
    """The password strings a message about ``url`` must not show (raw and unescaped)."""
    found: list[str] = []
    m = _SCHEME.match(url)
    if m is not None and "@" in m.group(2):
        userinfo = m.group(2).rpartition("@")[0]
        user, colon, password = userinfo.partition(":")
        found.append(password if colon else user)
    found += [q.group(0).split("=", 1)[1] for q in _QUERY_PASSWORD.finditer(url)]
    found += [unquote(s) for s in found]
    return sorted({s for s in found if s}, key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` (an error message about ``url``) with every password of ``url`` replaced by ``***``."""
    for secret in _secrets_of(url):
        text = text.replace(secret, _MASK)
    return text


def socket_address(url: str) -> tuple[int, str | tuple[str, int]]:
    """``(family, address)`` to open a socket to a ``unix://path`` or ``redis://host:port`` URL.

    Only for the URLs the embedded server writes (no password, database or query).
    """
    if url.startswith("unix://"):
        return socket.AF_UNIX, url[len("unix://"):]
    host, _, port = url[len("redis://"):].rpartition(":")
    return socket.AF_INET, (host, int(port))
