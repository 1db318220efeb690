"""The HTTP front door: health now; /alertmanager, /slack/events and /metrics hang off this app."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from temporalio.client import Client

from bot.metrics import exposition

Check = Callable[[], Awaitable[str | None]]  # None when fine, else the reason


@dataclass
class Readiness:
    """Named checks /readyz runs; each returns None or why the bot is not ready."""

    checks: dict[str, Check] = field(default_factory=dict)
    # Facts /readyz reports beside the checks, never failing it (the catalog hash: replicas that
    # serve the same playbooks show the same one).
    facts: dict[str, Callable[[], Any]] = field(default_factory=dict)

    async def run(self) -> dict[str, str]:
        async def one(check: Check) -> str:
            try:
                reason = await asyncio.wait_for(check(), timeout=3)
            except asyncio.TimeoutError:
                return "no answer within 3s"
            except Exception as exc:  # a failing check is a reason, never a 500
                return f"{type(exc).__name__}: {exc}"
            return reason or "ok"

        names = list(self.checks)
        results = await asyncio.gather(*(one(self.checks[n]) for n in names))
        return dict(zip(names, results))


def temporal_check(client: Client) -> Check:
    async def check() -> str | None:
        return None if await client.service_client.check_health() else "Temporal reports not serving"

    return check


def policy_check(engine: Any) -> Check:
    async def check() -> str | None:
        return None if await engine.ready() else "policies not loaded (see the worker log)"

    return check


def audit_check(store: Any) -> Check:
    async def check() -> str | None:
        return await asyncio.to_thread(store.check_writable)

    return check


def flag_check(flag: Callable[[], bool], reason: str) -> Check:
    async def check() -> str | None:
        return None if flag() else reason

    return check


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


def create_app(readiness: Readiness, routers: Sequence[APIRouter] = ()) -> FastAPI:
    app = FastAPI(title="playbook-bot", version="0.1.0")
    for router in routers:
        app.include_router(router)

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
    async def readyz() -> JSONResponse:
        """Ready: every dependency check passes; the body says which one does not."""
        results = await readiness.run()
        ok = all(value == "ok" for value in results.values())
        body: dict[str, Any] = {"status": "ready" if ok else "not ready", "checks": results}
        for name, fact in readiness.facts.items():
            body[name] = fact()
        return JSONResponse(body, status_code=200 if ok else 503)

    return app
