"""Who may use the console (``docs/console.md``): an auth file of users and bearer tokens,
signed session cookies, CSRF tokens and two roles.

The auth file is JSON::

    {"users":  {"alice": {"password": "scrypt$16384$8$1$<salt hex>$<hash hex>", "role": "operator"}},
     "tokens": {"<sha256 hex of the token>": {"name": "ci-bot", "role": "viewer"}},
     "secret": "<at least 32 characters: signs the session cookies>"}

``abstractruntime console hash-password`` prints a password's line. ``viewer`` reads;
``operator`` also cancels, answers, retries and wakes runs. Without ``secret`` the cookies are
signed with a key made at start (sessions end when the console restarts).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["AuthFile", "AuthFileError", "Session", "hash_password", "ROLES"]

ROLES = ("viewer", "operator")
SESSION_S = 8 * 3600
_SCRYPT = (16384, 8, 1)


class AuthFileError(ValueError):
    """The auth file cannot be used (the message names the file and the field)."""


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    n, r, p = _SCRYPT
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def _check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(digest) // 2)
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


@dataclass(frozen=True)
class Session:
    user: str
    role: str
    csrf: str
    expires: int

    @property
    def operator(self) -> bool:
        return self.role == "operator"


class AuthFile:
    def __init__(self, users: dict[str, dict[str, str]], tokens: dict[str, dict[str, str]], secret: bytes) -> None:
        self.users, self.tokens, self.secret = users, tokens, secret

    @classmethod
    def load(cls, path: str | Path) -> AuthFile:
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise AuthFileError(f"{p}: cannot be read: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise AuthFileError(f"{p}: not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise AuthFileError(f"{p}: the top level must be an object")
        users, tokens = data.get("users") or {}, data.get("tokens") or {}
        for kind, entries in (("users", users), ("tokens", tokens)):
            if not isinstance(entries, dict):
                raise AuthFileError(f"{p}: {kind} must be an object")
            for name, entry in entries.items():
                if not isinstance(entry, dict) or entry.get("role") not in ROLES:
                    raise AuthFileError(f"{p}: {kind}.{name}.role must be one of {', '.join(ROLES)}")
                if kind == "users" and not str(entry.get("password", "")).startswith("scrypt$"):
                    raise AuthFileError(f"{p}: users.{name}.password must be a hash from "
                                        "`abstractruntime console hash-password`")
        if not users and not tokens:
            raise AuthFileError(f"{p}: no users and no tokens: nobody could log in")
        secret = data.get("secret")
        if secret is not None and (not isinstance(secret, str) or len(secret) < 32):
            raise AuthFileError(f"{p}: secret must be a string of at least 32 characters")
        return cls(users, tokens, secret.encode() if secret else secrets.token_bytes(32))

    def login(self, user: str, password: str) -> Session | None:
        entry = self.users.get(user)
        if entry is None:
            _check_password(password, hash_password("-", salt=b"0" * 16))  # the same time for unknown users
            return None
        if not _check_password(password, entry["password"]):
            return None
        return Session(user, entry["role"], secrets.token_urlsafe(24), int(time.time()) + SESSION_S)

    def bearer(self, token: str) -> Session | None:
        entry = self.tokens.get(hashlib.sha256(token.encode()).hexdigest())
        if entry is None:
            return None
        return Session(f"token:{entry.get('name') or 'unnamed'}", entry["role"], "", int(time.time()) + 60)

    # -- the cookie: base64(JSON).signature ---------------------------------------------------------

    def _sign(self, body: bytes) -> str:
        return hmac.new(self.secret, body, hashlib.sha256).hexdigest()

    def cookie(self, session: Session) -> str:
        body = base64.urlsafe_b64encode(json.dumps(
            {"u": session.user, "r": session.role, "c": session.csrf, "e": session.expires}).encode())
        return f"{body.decode()}.{self._sign(body)}"

    def session(self, cookie: str | None) -> Session | None:
        """The session a cookie holds; None when absent, forged or expired."""
        if not cookie or "." not in cookie:
            return None
        body, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(self._sign(body.encode()), signature):
            return None
        try:
            data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body.encode()))
            session = Session(str(data["u"]), str(data["r"]), str(data["c"]), int(data["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires < time.time() or session.role not in ROLES:
            return None
        return session
