"""bot/http_limits.py: a request's deadline ends when the request has arrived, whatever paused reading
before (review: a handler that read a large body and then worked was cut off)."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from bot import http_limits
from bot.devstack import free_port
from bot.lifecycle import Http
from bot.readiness import Readiness
from bot.server import create_app, read_limited
from bot.settings import Settings
from tests.test_http_limits import connection
from tests.test_http_limits_clients import response

DEADLINE = 0.5


@pytest_asyncio.fixture
async def door(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[int]:
    monkeypatch.setattr(http_limits, "REQUEST_DEADLINE", DEADLINE)
    router = APIRouter()

    @router.post("/work")
    async def work(request: Request) -> PlainTextResponse:
        body = await read_limited(request, 1 << 20)
        await asyncio.sleep(DEADLINE * 3)  # the handler's own work: not timed (module docstring)
        return PlainTextResponse(f"got {len(body or b'')}")

    port = free_port()
    http = Http(Settings(data_dir=tmp_path, http_host="127.0.0.1", http_port=port),
                create_app(Readiness(), [router]))
    await http.start()
    try:
        yield port
    finally:
        await http.stop()


async def test_a_handler_that_works_after_reading_a_large_body_is_not_cut(door: int) -> None:
    body = b"x" * 100_000
    async with connection(door) as (reader, writer):
        writer.write(b"POST /work HTTP/1.1\r\nHost: bot\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        got = await response(reader)
        assert got.endswith(b"got 100000"), got
