"""How the remote LLM client sends its HTTP request: a small injectable object.

``RemoteAbstractCoreLLMClient(request_sender=...)`` takes any object with
``post(url, *, headers, json, timeout)`` returning :class:`HttpResponse` (or just the body as
a dict), so a host can add its own transport (a pooled session, a proxy, mTLS) and tests can
record requests without a server. The default, :class:`UrllibRequestSender`, uses only the
standard library, keeping the remote mode free of extra packages.
"""

from __future__ import annotations

import json as jsonlib
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ...errors import EffectError

__all__ = ["HttpResponse", "HttpStatusError", "RequestSender", "UrllibRequestSender", "mask_url"]


@dataclass(frozen=True)
class HttpResponse:
    """A reply: ``body`` is the decoded JSON (the text when it is not JSON), ``headers`` as sent."""

    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class RequestSender(Protocol):
    def post(self, url: str, *, headers: dict[str, str], json: dict[str, Any], timeout: float) -> Any:
        """POST ``json`` to ``url``; return :class:`HttpResponse` or the body as a dict.

        Raise on an HTTP error status; an exception with a ``status_code`` (this module's
        :class:`HttpStatusError`, httpx's ``HTTPStatusError`` through its ``response``) tells
        the client whether another attempt may help.
        """


class HttpStatusError(EffectError):
    """Raised by :class:`UrllibRequestSender` when the server answers with an HTTP error status."""

    def __init__(self, status_code: int, url: str, detail: str) -> None:
        super().__init__(f"HTTP {status_code} from {mask_url(url)}: {detail}")
        self.status_code = status_code
        self.url = mask_url(url)
        self.detail = detail


def mask_url(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***``, for messages and logs."""
    return re.sub(r"://([^/@:]*):[^/@]*@", r"://\1:***@", url)


class UrllibRequestSender:
    """The default sender: ``urllib.request``, one connection per request.

    Raises :class:`HttpStatusError` for an error status, and ``OSError`` (``URLError``,
    ``TimeoutError``, ``ConnectionError``) when the server cannot be reached or is too slow.
    """

    def post(self, url: str, *, headers: Mapping[str, str], json: Any, timeout: float) -> HttpResponse:
        sent = {"Content-Type": "application/json", **headers}
        request = urllib.request.Request(url, data=jsonlib.dumps(json).encode(), headers=sent, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
                reply_headers = dict(response.headers.items())
        except urllib.error.HTTPError as exc:
            detail = " ".join(exc.read(500).decode("utf-8", "replace").split())[:300]
            raise HttpStatusError(exc.code, url, detail) from None
        try:
            body: Any = jsonlib.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        return HttpResponse(body=body, headers=reply_headers)
