"""The console's pages and actions (Starlette, server-rendered Jinja2; ``docs/console.md``).

Every read goes through the client's stores, every operator action through the client, so it
lands in the ledger with the logged-in user as actor. No JSON API of its own: the client is
the API; the script (``static/console.js``) only posts forms and follows SSE.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import redis
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from runtime import RunStatus, WaitReason
from stores.redis.errors import RedisUnavailable

from ..fleet import explain_run
from .auth import AuthFile, Session
from .graph import graph_svg
from .live import Hub
from .views import (
    BadFilter,
    ago,
    entry_before,
    flow_usage,
    is_secret,
    llm_usage_of,
    non_negative,
    observed_edges,
    parse_filters,
    plausible_id,
    pretty,
    redacted,
    runs_page,
    safe_name,
    took,
)

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
ROWS = 100         # ledger rows per page
SHOWN = 2000       # characters of a payload shown inline (the rest: the download link)
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
_COOKIE = "ar_session"
#: Redis cannot be reached: a banner (a page) or a 503 (an action), never a 500.
_STORE_DOWN: tuple[type[BaseException], ...] = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                                                RedisUnavailable, ConnectionError)


def make_app(client: Any, auth: AuthFile | None, *, secret_keys: tuple[str, ...] = ()) -> Any:
    """The console over ``client``; ``auth`` None: no login (``--no-auth``, for a laptop)."""
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
    env.filters["pretty"] = lambda v: pretty(v, secret_keys)
    env.filters["ago"] = ago
    env.filters["took"] = took
    hub = Hub(client)
    broker = _SharedProbe(client)

    def session_of(request: Request) -> Session | None:
        if auth is None:
            return Session("local", "operator", "local", 2**62)
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return auth.bearer(header[7:].strip())
        return auth.session(request.cookies.get(_COOKIE))

    def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        session = request.state.session
        html = env.get_template(template).render(
            request=request, session=session, csrf=session.csrf if session else "", path=request.url.path,
            **context)
        return HTMLResponse(html, status_code=status)

    def guarded(handler: Any, *, post: bool = False, operator: bool = False) -> Any:
        async def endpoint(request: Request) -> Response:
            session = session_of(request)
            request.state.session = session
            if session is None:
                if post or request.url.path.endswith("/events"):
                    return JSONResponse({"error": "log in first"}, status_code=401)
                return RedirectResponse("/login?" + urlencode({"next": str(request.url.path)}), status_code=303)
            if post:
                if session.csrf and request.headers.get("x-csrf-token") != session.csrf:
                    return JSONResponse({"error": "missing or wrong CSRF token"}, status_code=403)
                if operator and not session.operator:
                    return JSONResponse({"error": f"{session.user} is a viewer: operators only"}, status_code=403)
            try:
                return await asyncio.to_thread(handler, request) if not asyncio.iscoroutinefunction(handler) \
                    else await handler(request)
            except _STORE_DOWN as exc:
                if post:
                    return JSONResponse({"error": f"Redis cannot be reached: {exc}"}, status_code=503)
                return page(request, "error.html", 503, banner=f"Redis cannot be reached: {exc}",
                            title="Redis is down", message="The console will show the runs again once Redis answers.")
        return endpoint

    # -- login -------------------------------------------------------------------------------------------------

    async def login(request: Request) -> Response:
        request.state.session = None
        if auth is None:  # no login on this machine's own console
            return RedirectResponse("/runs", status_code=303)
        error = None
        if request.method == "POST":
            form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
            session = auth.login(form.get("user", ""), form.get("password", ""))
            if session is not None:
                target = form.get("next") or "/runs"
                response = RedirectResponse(target if target.startswith("/") and not target.startswith("//")
                                            else "/runs", status_code=303)
                response.set_cookie(_COOKIE, auth.cookie(session), httponly=True, samesite="strict",
                                    secure=request.url.scheme == "https", max_age=8 * 3600)
                return response
            error = "Wrong user name or password."
        return page(request, "login.html", 401 if error else 200, error=error,
                    next=request.query_params.get("next", "/runs"))

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(_COOKIE)
        return response

    # -- runs --------------------------------------------------------------------------------------------------

    def runs(request: Request) -> Response:
        q = request.query_params
        error, rows, next_cursor = None, [], None
        try:
            filters = parse_filters(q)
            if filters["prefix"] and len(filters["prefix"]) >= 36:
                found = client.backend.runs.load(filters["prefix"])
                rows = [found] if found is not None else []
            else:
                rows, next_cursor = runs_page(client, filters, q.get("cursor"))
        except BadFilter as exc:
            error = str(exc)
        counts = {s.value: client.count(status=s) for s in RunStatus}
        args = [(k, v) for k, v in q.multi_items() if k != "cursor" and v]
        return page(request, "runs.html", 400 if error else 200, runs=rows, counts=counts, error=error, q=q,
                    attrs=q.getlist("attr"), statuses=[s.value for s in RunStatus],
                    reasons=[r.value for r in WaitReason],
                    next_url=f"/runs?{urlencode([*args, ('cursor', next_cursor)])}" if next_cursor else None)

    def run_page(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        state = client.backend.runs.load(run_id) if plausible_id(run_id) else None
        if state is None:
            return page(request, "error.html", 404, title="No such run",
                        message=f"There is no run {run_id!r}.")
        after = request.query_params.get("after", "-")
        first = non_negative(request.query_params.get("from"), 0)
        head = client.backend.ledger.page(run_id, count=2000)  # the path taken and the tokens
        rows = head[:ROWS] if after == "-" else client.backend.ledger.page(run_id, after=after, count=ROWS)
        total = client.backend.ledger.length(run_id)
        early = [rec for _i, rec in head]
        diagnosis, svg = head_parts(state, early)
        waits = [w for w in client.list_waits(root_run_id=run_id) if w.get("run_id") == run_id]
        children = client.backend.runs.list_children(parent_run_id=run_id)
        usage = llm_usage_of(state, early, total)
        failure = client.last_failure(run_id) if state.status == RunStatus.FAILED else None
        last_id = rows[-1][0] if rows else after
        more = first + len(rows) < total
        return page(request, "run.html", run=state, diagnosis=diagnosis, rows=rows, first=first, total=total,
                    waits=waits, children=children, svg=svg, usage=usage, failure=failure, last_id=last_id,
                    on_last_page=not more, shown=SHOWN,
                    next_url=f"/runs/{run_id}?{urlencode({'after': last_id, 'from': first + len(rows)})}"
                    if more else None,
                    vars_shown=[(k, pretty(v, secret_keys) if not is_secret(k, secret_keys) else '"[redacted]"')
                                for k, v in sorted(state.vars.items()) if not k.startswith("_")])

    def head_parts(state: Any, records: list[dict[str, Any]] | None = None) -> tuple[dict[str, Any], str]:
        """The ``explain`` of a run and its graph (the parts of its page that change as it moves)."""
        try:
            with broker as probe:
                diagnosis = explain_run(client.backend, client.settings, state.run_id, broker=probe).to_dict()
        except _STORE_DOWN:
            raise
        except Exception as exc:  # the broker is down, say: the page still renders
            diagnosis = {"code": "UNKNOWN", "sentence": f"explain failed: {exc}", "action": ""}
        spec = client.registry.workflows.get(state.workflow_id)
        if records is None:
            records = [rec for _i, rec in client.backend.ledger.page(state.run_id, count=500)]
        path = [rec.get("node_id") for rec in records[:500]]
        return diagnosis, graph_svg(spec, observed_edges(client, state.workflow_id, state.run_id, path), path,
                                    state.current_node)

    def rows_fragment(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        if not plausible_id(run_id):
            return HTMLResponse("", status_code=404)
        after = request.query_params.get("after", "-")
        first = non_negative(request.query_params.get("from"), 0)
        rows = client.backend.ledger.page(run_id, after=after, count=ROWS)
        state = client.backend.runs.load(run_id)
        html = env.get_template("_rows.html").render(rows=rows, first=first, shown=SHOWN, run_id=run_id)
        out = {"html": html, "last_id": rows[-1][0] if rows else after, "count": len(rows),
               "total": client.backend.ledger.length(run_id), "status": state.status.value if state else None,
               "node": state.current_node if state else None}
        if state is not None and request.query_params.get("head"):  # the status or node changed
            diagnosis, svg = head_parts(state)
            out["head"] = env.get_template("_head.html").render(run=state, diagnosis=diagnosis)
            out["graph"] = svg
        return JSONResponse(out)

    def payload(request: Request) -> Response:
        run_id, entry = request.path_params["run_id"], request.path_params["entry"]
        if not plausible_id(run_id) or not re.fullmatch(r"\d+-\d+", entry):
            return Response("not found", status_code=404)
        found = client.backend.ledger.page(run_id, after=entry_before(entry), count=1)
        if not found or found[0][0] != entry:
            return Response("not found", status_code=404)
        body = json.dumps(redacted(found[0][1], secret_keys), indent=2, default=str)
        return Response(body, media_type="application/json",
                        headers={"Content-Disposition": f'attachment; filename="{safe_name(run_id)}-{entry}.json"'})

    def var_value(request: Request) -> Response:
        run_id, name = request.path_params["run_id"], request.path_params["name"]
        state = client.backend.runs.load(run_id) if plausible_id(run_id) else None
        if state is None or name.startswith("_") or name not in state.vars:
            return Response("not found", status_code=404)
        body = "[redacted]" if is_secret(name, secret_keys) else pretty(state.vars[name], secret_keys)
        return Response(body, media_type="application/json",
                        headers={"Content-Disposition": f'attachment; filename="{run_id}-{safe_name(name)}.json"'})

    async def events(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        queue = hub.subscribe(run_id)

        async def stream() -> Any:
            try:
                yield "retry: 2000\n\n"
                while True:
                    try:
                        event = await asyncio.wait_for(queue.get(), timeout=15)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    yield f"data: {json.dumps(event)}\n\n"
            finally:
                hub.unsubscribe(run_id, queue)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    # -- actions (operators; each through the client, with the user as actor) -----------------------------------

    def act(request: Request, body: dict[str, Any]) -> Response:
        run_id, action = request.path_params["run_id"], request.path_params["action"]
        user = request.state.session.user
        reason = str(body.get("reason") or "").strip()
        if not plausible_id(run_id) or client.backend.runs.load(run_id) is None:
            return JSONResponse({"error": f"no run {run_id!r}"}, status_code=404)
        try:
            if action == "cancel":
                client.cancel(run_id, reason=reason or "cancelled in the console", actor=user)
            elif action == "retry":
                if not reason:
                    return JSONResponse({"error": "a retry needs a reason"}, status_code=400)
                client.retry(run_id, reason=reason, actor=user)
            elif action == "wake":
                if not reason:
                    return JSONResponse({"error": "waking a run needs a reason"}, status_code=400)
                client.wake(run_id, reason=reason, actor=user)
            elif action == "answer":
                wait = body.get("wait")
                answer = body.get("answer")
                if wait:
                    client.answer(run_id, str(wait), answer, answered_by=user)
                else:
                    client.respond(run_id, answer, by=user)
            elif action == "verify":
                report = client.verify(run_id)
                return JSONResponse({"ok": bool(report.get("ok")), "count": report.get("count"),
                                     "first_bad_index": report.get("first_bad_index"),
                                     "errors": report.get("errors", [])[:5]})
            else:
                return JSONResponse({"error": f"unknown action {action!r}"}, status_code=404)
        except _STORE_DOWN:
            raise
        except Exception as exc:  # the client's typed errors: shown to the operator as they are
            return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=400)
        return JSONResponse({"ok": True})

    async def action(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        return await asyncio.to_thread(act, request, body)

    def fleet(request: Request) -> Response:
        from ..fleet import consumers_by_queue
        from ..heartbeat import ALIVE_WITHIN_S
        from ..settings import QUEUE_KINDS
        from ..stuck import stuck_counts

        b = client.backend
        now = b.time_ms()
        seen = b.live_processes(now - 3600_000)
        alive = [p for p in seen if p.get("at", 0) >= now - ALIVE_WITHIN_S * 1000]
        live = consumers_by_queue(alive)
        queues = []
        with broker as probe:
            for kind in QUEUE_KINDS:
                name = client.settings.queue(kind)
                try:
                    depth: int | str = probe.depth(name)
                except Exception as exc:
                    depth = f"unknown ({exc})"
                queues.append({"kind": kind, "name": name, "depth": depth, "consumers": len(live.get(name, ()))})
        flow = flow_usage(client)
        return page(request, "fleet.html", processes=sorted(seen, key=lambda p: str(p.get("process_id"))),
                    alive={p.get("process_id") for p in alive}, queues=queues, stuck=stuck_counts(b),
                    schedules=client.schedules(), flow=flow, now=now)

    async def root(request: Request) -> Response:
        return RedirectResponse("/runs", status_code=303)

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    app = Starlette(routes=[
        Route("/", root),
        Route("/favicon.ico", favicon),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/runs", guarded(runs)),
        Route("/runs/{run_id}", guarded(run_page)),
        Route("/runs/{run_id}/rows", guarded(rows_fragment)),
        Route("/runs/{run_id}/events", guarded(events)),
        Route("/runs/{run_id}/records/{entry}", guarded(payload)),
        Route("/runs/{run_id}/vars/{name}", guarded(var_value)),
        Route("/runs/{run_id}/{action}", guarded(action, post=True, operator=True), methods=["POST"]),
        Route("/fleet", guarded(fleet)),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ])
    app.state.hub = hub
    return _Headers(app)


class _SharedProbe:
    """One broker connection for the whole console (``explain`` and the fleet's queue depths),
    used by one request at a time; a probe that fails closes, and the next use opens another."""

    def __init__(self, client: Any) -> None:
        from ..fleet import BrokerProbe

        self.probe = BrokerProbe(client.app, client.settings)
        self.lock = threading.Lock()

    def __enter__(self) -> Any:
        self.lock.acquire()
        return self.probe

    def __exit__(self, *exc: Any) -> None:
        self.lock.release()


class _Headers:
    """Security headers on every response (a pure ASGI wrapper: SSE streams pass through)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.state = app.state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"content-security-policy", CSP.encode()),
                                      (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"),
                                      (b"x-frame-options", b"DENY")]
            await send(message)

        await self.app(scope, receive, sending)
