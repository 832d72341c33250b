"""An OpenAI-compatible server on loopback for the tests and the offline examples (stdlib only).

``GET /v1/models`` lists ``gpt-4o-mini``; ``POST /v1/chat/completions`` answers by the last
user message (or the last tool result):

* a request that offers ``tools`` and whose last message is from the user gets tool calls:
  ``add(a=2, b=3)`` and ``shout(text=<the message>)``; after tool results it answers with
  them (a ReAct loop of one round);
* ``fail500`` -> HTTP 500; ``fail400`` -> HTTP 400; ``notjson`` -> a body that is not JSON;
  ``slow:N`` -> the answer after N seconds;
* anything else -> ``echo: <message>``.

Every request is recorded (``server.requests``) so a test can count calls, e.g. to prove a
paid call was not repeated. Usage figures are counted in words.

    with FakeOpenAI() as fake:
        fake.base_url   # http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "gpt-4o-mini"


def _last(messages: list[dict[str, Any]], role: str) -> dict[str, Any] | None:
    for message in reversed(messages):
        if message.get("role") == role:
            return message
    return None


def _text(message: dict[str, Any] | None) -> str:
    if message is None:
        return ""
    content = message.get("content")
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


class _Handler(BaseHTTPRequestHandler):
    server: FakeOpenAIServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Trace-Id", f"trace-{len(self.server.requests)}")
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode())
        else:
            self._send(404, b'{"error": {"message": "not found"}}')

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send(400, b'{"error": {"message": "request is not JSON"}}')
            return
        messages = body.get("messages") or []
        with self.server.lock:
            self.server.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
        last_user = _text(_last(messages, "user"))
        last = messages[-1] if messages else {}
        if last_user == "fail500":
            self._send(500, b'{"error": {"message": "upstream exploded"}}')
            return
        if last_user == "fail400":
            self._send(400, b'{"error": {"message": "bad request: model does not exist"}}')
            return
        if last_user == "notjson":
            self._send(200, b"<html>surprise</html>", "text/html")
            return
        if last_user.startswith("slow:"):
            time.sleep(float(last_user.split(":", 1)[1]))
        if body.get("tools") and last.get("role") == "user":
            message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_add", "type": "function",
                 "function": {"name": "add", "arguments": json.dumps({"a": 2, "b": 3})}},
                {"id": "call_shout", "type": "function",
                 "function": {"name": "shout", "arguments": json.dumps({"text": last_user})}},
            ]}
            finish = "tool_calls"
        elif last.get("role") == "tool":
            results = [_text(m) for m in messages if m.get("role") == "tool"]
            message = {"role": "assistant", "content": "answer: " + "; ".join(results)}
            finish = "stop"
        else:
            message = {"role": "assistant", "content": f"echo: {last_user}"}
            finish = "stop"
        words = sum(len(_text(m).split()) for m in messages)
        reply = {"id": f"chatcmpl-{len(self.server.requests)}", "object": "chat.completion", "created": 0,
                 "model": body.get("model", MODEL),
                 "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                 "usage": {"prompt_tokens": words, "completion_tokens": 5, "total_tokens": words + 5}}
        self._send(200, json.dumps(reply).encode())


class FakeOpenAIServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()


class FakeOpenAI:
    """The server in a thread, as a context manager."""

    def __init__(self) -> None:
        self.server = FakeOpenAIServer()
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.server.requests

    def calls_with(self, text: str, *, asking: bool = False) -> int:
        """How many chat requests had ``text`` as their last user message (with ``asking``: as their
        very last message, i.e. the first turn, not a follow-up carrying tool results)."""
        count = 0
        for r in self.requests:
            messages = r["body"].get("messages") or []
            if not r["path"].endswith("/chat/completions") or _text(_last(messages, "user")) != text:
                continue
            if asking and (not messages or messages[-1].get("role") != "user"):
                continue
            count += 1
        return count

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":  # python tests/support/fake_openai.py: serve until Ctrl-C, print the URL
    fake = FakeOpenAI().start()
    print(fake.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()
