"""A console served by uvicorn in a thread of the test process, on a free loopback port, with an
auth file of two users (``op`` an operator, ``vi`` a viewer; passwords ``op-secret-1``,
``vi-secret-1``) and one viewer token (``tok-viewer-123``)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

from support.redis_server import free_port

PASSWORDS = {"op": "op-secret-1", "vi": "vi-secret-1"}
TOKEN = "tok-viewer-123"


def write_auth_file(folder: Path) -> Path:
    from workers.console import hash_password

    path = folder / "console-auth.json"
    path.write_text(json.dumps({
        "users": {"op": {"password": hash_password(PASSWORDS["op"]), "role": "operator"},
                  "vi": {"password": hash_password(PASSWORDS["vi"]), "role": "viewer"}},
        "tokens": {hashlib.sha256(TOKEN.encode()).hexdigest(): {"name": "ci", "role": "viewer"}},
        "secret": "s" * 40}))
    return path


class ConsoleServer:
    def __init__(self, client: Any, auth_file: Path | None, secret_keys: tuple[str, ...] = ("password",)) -> None:
        import uvicorn

        from workers.console import AuthFile, make_app

        self.app = make_app(client, AuthFile.load(auth_file) if auth_file else None, secret_keys=secret_keys)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ConsoleServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the console did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.app.state.hub.stop()
        self.server.should_exit = True
        self.thread.join(10)


def login(http: Any, user: str) -> None:
    """Log ``http`` (an httpx.Client on the console) in as ``user``."""
    response = http.post("/login", data={"user": user, "password": PASSWORDS[user], "next": "/runs"})
    assert response.status_code == 303, response.text


def csrf_of(html: str) -> str:
    import re

    found = re.search(r'<meta name="csrf-token" content="([^"]*)">', html)
    assert found, "no CSRF token in the page"
    return found.group(1)
