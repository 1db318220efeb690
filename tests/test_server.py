"""The front door's health and metrics, against real dependencies."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest
import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from temporalio.client import Client

from bot.audit.store import SqliteAuditStore
from bot.devstack import DevServer, free_port
from bot.engine.worker import make_worker, worker_deps
from bot.engine.workflow import PlaybookRun
from bot.readiness import WITHHELD, Readiness, audit_check, temporal_check
from bot.server import DirectRoutes, create_app, direct_route, read_limited
from bot.settings import Settings
from tests.engine.support import catalog_of, playbook, run_input


def client_for(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bot")


async def test_healthz_is_alive_without_dependencies():
    async with client_for(create_app(Readiness())) as http:
        response = await http.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_readyz_fails_when_temporal_goes_down(tmp_path: Path):
    server = DevServer(tmp_path, port=free_port(), ui_port=free_port())
    await server.start()
    try:
        client = await Client.connect(server.address)
        app = create_app(Readiness({"temporal": temporal_check(client)}, fresh=0))
        async with client_for(app) as http:
            assert (await http.get("/readyz")).status_code == 200
            await server.stop()
            response = await http.get("/readyz")
    finally:
        await server.stop()
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not ready" and body["checks"]["temporal"] != "ok"


async def test_readyz_says_why_the_audit_store_is_not_writable(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    store = SqliteAuditStore(blocker / "audit.db")
    async with client_for(create_app(Readiness({"audit": audit_check(store)}))) as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert "a-file" in response.json()["checks"]["audit"]


async def test_readyz_tells_why_only_to_the_host_itself(tmp_path: Path):
    """Red team (stop 49): /readyz is open to whoever reaches the port (Slack and Alertmanager must),
    and its reasons named the audit store's path (a database's host and user), and the catalog's
    errors each playbook file's path and parse error. A caller from elsewhere reads which check
    fails, not why; the host's own healthcheck, and the log, read the reason."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    readiness = Readiness({"audit": audit_check(SqliteAuditStore(blocker / "audit.db"))}, fresh=0)
    readiness.facts["catalog"] = lambda: {"hash": "sha256:abc", "playbooks": 3,
                                          "errors": f"{tmp_path}/secret-ops/restart.yaml: steps.0: bad"}
    outside = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(readiness), client=("203.0.113.9", 40000)),
                                base_url="http://bot")
    with structlog.testing.capture_logs() as logs:
        async with outside as http:
            response = await http.get("/readyz")
    assert response.status_code == 503
    (said,) = [e for e in logs if e["event"] == "not ready"]
    assert "a-file" in said["checks"]["audit"]
    body = response.json()
    assert str(tmp_path) not in response.text, body
    assert body["checks"]["audit"] == WITHHELD and body["status"] == "not ready"
    assert body["catalog"]["hash"] == "sha256:abc" and body["catalog"]["playbooks"] == 3
    async with client_for(create_app(readiness)) as http:  # (127.0.0.1)
        local = (await http.get("/readyz")).json()
    assert "a-file" in local["checks"]["audit"] and "secret-ops" in local["catalog"]["errors"]


async def test_metrics_move_with_a_run(dev_env, tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "data", policies_dir=Path(__file__).parent.parent / "policies")
    name = f"metered-{uuid.uuid4().hex[:8]}"
    pb = playbook(
        f"""
name: {name}
steps:
  - {{id: one, action: core.log, with: {{message: hi}}}}
  - {{id: two, action: core.log, with: {{message: there}}}}
"""
    )
    app = create_app(Readiness())
    async with worker_deps(settings, catalog=catalog_of(pb)) as deps, make_worker(
        dev_env.client, f"tq-{uuid.uuid4()}", deps.activities
    ) as w:
        async with client_for(app) as http:
            before = (await http.get("/metrics")).text
            status = await dev_env.client.execute_workflow(
                PlaybookRun.run, run_input(pb), id=f"{name}-run", task_queue=w.task_queue
            )
            after = (await http.get("/metrics")).text
    assert status.state == "completed"
    started = f'playbook_bot_runs_started_total{{playbook="{name}",trigger="cli"}} 1.0'
    finished = f'playbook_bot_runs_finished_total{{playbook="{name}",state="completed",trigger="cli"}} 1.0'
    assert started not in before and started in after
    assert finished in after
    assert 'playbook_bot_step_duration_seconds_count{action="core.log",state="succeeded"}' in after


async def test_slack_events_route_only_when_slack_is_configured(dev_env, tmp_path: Path):
    from bot.playbook.loader import Catalog
    from bot.services import front_door, slack_app

    store = SqliteAuditStore(tmp_path / "audit.db")
    off = Settings(data_dir=tmp_path)
    assert slack_app(off, dev_env.client, Catalog(), None, store) is None
    on = Settings(data_dir=tmp_path, slack_bot_token="xoxb-x", slack_signing_secret="s3cret", slack_api_url="http://127.0.0.1:9/api/")
    app = slack_app(on, dev_env.client, Catalog(), None, store)
    paths = [r.path for router in front_door(on, dev_env.client, Catalog(), None, store, app) for r in router.routes]
    assert "/slack/events" in paths and "/alertmanager" in paths
    served = DirectRoutes(create_app(Readiness(), front_door(on, dev_env.client, Catalog(), None, store, app)))
    assert set(served.direct) >= {("POST", "/slack/events"), ("POST", "/alertmanager")}  # the hot paths skip FastAPI
    async with client_for(served) as http:
        unsigned = await http.post("/slack/events", content=b"command=/playbook&text=help")
        no_token = await http.post("/alertmanager", json={})
        wrong_method = await http.get("/slack/events")
    assert (unsigned.status_code, no_token.status_code, wrong_method.status_code) == (401, 401, 405)
    store.close()


def _direct_app():
    """One direct route and one ordinary one."""
    router = APIRouter()

    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        if body == b"fail":
            raise RuntimeError("an endpoint bug")
        if body == b"forbidden":
            raise HTTPException(403, "not you")
        return JSONResponse({"got": body.decode(), "query": request.url.query, "app": type(request.app).__name__},
                            status_code=202, headers={"x-echo": "1"})

    direct_route(router, "/echo", echo, summary="echo")

    @router.post("/plain")
    async def plain(request: Request) -> JSONResponse:
        return JSONResponse({"got": (await request.body()).decode()})

    return create_app(Readiness(), [router])


def _noting(app, seen: list[str]):  # noqa: ANN001, ANN202
    """`app`, noting the path of every request that reaches it."""
    async def asgi(scope, receive, send):  # noqa: ANN001, ANN202
        if scope["type"] == "http":
            seen.append(scope["path"])
        await app(scope, receive, send)
    return asgi


async def test_a_direct_route_answers_as_fastapi_would_without_reaching_it():
    seen: list[str] = []
    app = _direct_app()
    served = DirectRoutes(app)
    served.app = _noting(app, seen)
    async with client_for(served) as direct, client_for(app) as through_fastapi:
        for http in (direct, through_fastapi):
            response = await http.post("/echo?x=1", content=b"hello")
            assert (response.status_code, response.json(), response.headers["x-echo"]) == (
                202, {"got": "hello", "query": "x=1", "app": "FastAPI"}, "1")
            refused = await http.post("/echo", content=b"forbidden")
            assert (refused.status_code, refused.json()) == (403, {"detail": "not you"})
        assert (await direct.post("/plain", content=b"a")).json() == {"got": "a"}  # not direct: FastAPI's
        assert (await direct.get("/echo")).status_code == 405
        assert (await direct.get("/healthz")).status_code == 200
        listed = (await direct.get("/openapi.json")).json()["paths"]
    assert "/echo" in listed and "post" in listed["/echo"]
    assert seen == ["/plain", "/echo", "/healthz", "/openapi.json"]  # the POSTs to /echo never reached FastAPI


async def test_a_direct_route_that_fails_is_a_logged_500_without_the_request_headers(capsys):
    transport = httpx.ASGITransport(app=DirectRoutes(_direct_app()), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://bot") as http:
        failed = await http.post("/echo", content=b"fail", headers={"Authorization": "Bearer s3cret-t0ken"})
        after = await http.post("/echo", content=b"ok")
    assert (failed.status_code, failed.text) == (500, "Internal Server Error")
    assert after.status_code == 202
    captured = capsys.readouterr()
    logged = captured.out + captured.err
    assert "an endpoint bug" in logged and "s3cret-t0ken" not in logged


async def test_an_app_with_a_middleware_serves_nothing_directly():
    app, seen = _direct_app(), []

    @app.middleware("http")
    async def note(request: Request, call_next):  # noqa: ANN001, ANN202
        seen.append(request.url.path)
        return await call_next(request)

    served = DirectRoutes(app)
    assert served.direct == {}
    async with client_for(served) as http:
        assert (await http.post("/echo", content=b"x")).status_code == 202
    assert seen == ["/echo"]


def test_two_direct_endpoints_for_one_route_are_refused():
    first, second = APIRouter(), APIRouter()

    async def one(request: Request) -> JSONResponse:
        return JSONResponse({})

    direct_route(first, "/hook", one, summary="one")
    direct_route(second, "/hook", one, summary="two")
    with pytest.raises(ValueError, match="two endpoints for POST /hook"):
        create_app(Readiness(), [first, second])


def test_the_served_front_door_is_direct(tmp_path: Path):
    from bot.lifecycle import Http

    settings = Settings(data_dir=tmp_path, http_port=0)
    assert isinstance(Http(settings, create_app(Readiness())).server.config.app, DirectRoutes)


async def test_read_limited_stops_a_chunked_body_without_a_length():
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int | None]:
        body = await read_limited(request, 1000)
        again = await request.body() if body is not None else None  # still readable downstream
        return {"size": None if body is None else len(body), "again": None if again is None else len(again)}

    async def chunks(n: int):
        for _ in range(n):
            yield b"x" * 400

    async with client_for(app) as http:
        small = await http.post("/echo", content=chunks(2))
        large = await http.post("/echo", content=chunks(10))
    assert small.json() == {"size": 800, "again": 800}
    assert large.json() == {"size": None, "again": None}


async def test_a_flood_of_readyz_runs_the_checks_once_a_second(tmp_path: Path):
    """Red team: /readyz is open to anyone who reaches the port and asks Temporal and the audit
    store (a write transaction) each time: 50 at once took alert deliveries from 3 ms to over 1 s."""
    asked = 0

    async def slow_check() -> None:
        nonlocal asked
        asked += 1
        await asyncio.sleep(0.05)

    readiness = Readiness({"temporal": slow_check}, fresh=0.5)
    async with client_for(create_app(readiness)) as http:
        answers = await asyncio.gather(*(http.get("/readyz") for _ in range(50)))
        assert {a.status_code for a in answers} == {200} and asked == 1
        assert (await http.get("/readyz")).status_code == 200 and asked == 1  # fresh: given again
        await asyncio.sleep(0.6)
        assert (await http.get("/readyz")).status_code == 200 and asked == 2
        assert (await http.get("/docs")).status_code == 404  # no Swagger page (scripts from a CDN)
