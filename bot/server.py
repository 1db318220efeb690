"""The HTTP front door: health now; /alertmanager, /slack/events and /metrics hang off this app."""

from __future__ import annotations

import traceback
from typing import Any, Awaitable, Callable, Sequence

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from bot.metrics import exposition
from bot.readiness import Readiness, is_local, public_fact, withheld

log = structlog.get_logger(__name__)


async def read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None once it passes `limit` bytes: declared or chunked, nothing larger is
    buffered. The body stays readable with `request.body()` for handlers further down (Bolt)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # Starlette's own cache of request.body(): the stream is consumed now
    return body


Endpoint = Callable[[Request], Awaitable[Response]]


DIRECT = "playbook_direct_routes"  # on an APIRouter: {(method, path): endpoint} that direct_route added


def direct_route(router: APIRouter, path: str, endpoint: Endpoint, *, summary: str, methods: Sequence[str] = ("POST",)) -> None:
    """Declare `endpoint` on `router` (so /docs lists it) and have DirectRoutes call it straight
    from the server. For an endpoint that takes the raw Request and answers every outcome itself."""
    router.add_api_route(path, endpoint, methods=list(methods), summary=summary)
    table = router.__dict__.setdefault(DIRECT, {})
    table.update({(method, path): endpoint for method in methods})


class DirectRoutes:
    """The app as served: the direct routes are called straight from the server; everything else
    goes through FastAPI.

    FastAPI's per-request layers (its middleware stack, matching the path against every route,
    solving an empty dependency list, running the endpoint) cost a webhook or Slack request about
    as much CPU as our own handler (profiled, issue 15), and such an endpoint uses none of them:
    it reads its own body, checks its own auth and builds its own response. The routes stay
    declared on the FastAPI app, for /docs. An HTTPException is answered as FastAPI answers it; any
    other failure is logged and answered 500, as FastAPI's ServerErrorMiddleware does. An app with
    a middleware serves nothing directly: the middleware must see every request.
    """

    def __init__(self, app: FastAPI) -> None:
        self.fastapi = app
        self.app: Any = app  # what the other requests go to
        self.direct: dict[tuple[str, str], Endpoint] = getattr(app.state, DIRECT, {})
        if app.user_middleware and self.direct:  # a middleware must see every request: none is direct then
            log.warning("http middleware installed: the webhook and Slack routes go through FastAPI",
                        middleware=[m.cls.__name__ for m in app.user_middleware])
            self.direct = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.direct.get((scope.get("method", ""), scope.get("path", ""))) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        scope.setdefault("app", self.fastapi)  # as Starlette sets it: Request.app
        try:
            response = await endpoint(Request(scope, receive))
        except HTTPException as exc:  # as FastAPI answers it
            response = JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        except Exception as exc:
            # Not log.exception: a traceback rendered with its locals would show the request's headers.
            log.error("http endpoint failed", path=scope.get("path"), method=scope.get("method"),
                      error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
            response = PlainTextResponse("Internal Server Error", status_code=500)
        await response(scope, receive, send)  # a failure while sending is the server's, as through FastAPI


def create_app(readiness: Readiness, routers: Sequence[APIRouter] = ()) -> FastAPI:
    # No Swagger or ReDoc pages on a port the internet may reach (they load their scripts from a
    # CDN); /openapi.json still lists the routes, which the source lists anyway.
    app = FastAPI(title="playbook-bot", version="0.1.0", docs_url=None, redoc_url=None)
    direct: dict[tuple[str, str], Endpoint] = {}
    for router in routers:
        app.include_router(router)
        for key, endpoint in getattr(router, DIRECT, {}).items():
            if key in direct:  # FastAPI would serve the first; say so rather than pick one
                raise ValueError(f"two endpoints for {key[0]} {key[1]}")
            direct[key] = endpoint
    setattr(app.state, DIRECT, direct)  # DirectRoutes serves them

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Alive: the process answers. Says nothing about Temporal (see /readyz)."""
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus exposition of this process's counters (runs, steps, policy, approvals)."""
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        """Ready: every dependency check passes; the body says which one does not, and why to a
        caller on the host itself (`bot.readiness.WITHHELD`)."""
        results = await readiness.run()
        ok = all(value == "ok" for value in results.values())
        local = is_local(request.client.host if request.client else None)
        body: dict[str, Any] = {"status": "ready" if ok else "not ready",
                                "checks": results if local else withheld(results)}
        for name, fact in readiness.facts.items():
            body[name] = fact() if local else public_fact(fact())
        return JSONResponse(body, status_code=200 if ok else 503)

    return app
